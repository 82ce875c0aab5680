// A fetch for generic-filehandle2's RemoteFile that records every request it makes: the URL,
// the Range header sent and the status answered. The readers print this log so that a test can
// check that they read by Range (206), never the whole file.
export function recordingFetch(log) {
  return async function (url, init = {}) {
    const response = await fetch(url, init);
    const headers = new Headers(init.headers);
    log.push({
      url: String(url),
      range: headers.get("range"),
      status: response.status,
      contentRange: response.headers.get("content-range"),
    });
    return response;
  };
}

// "chr1:1000-2000" (1-based, inclusive, as samtools and tabix take it) → [name, start0, end0).
export function parseRegion(text) {
  const match = /^(.+):(\d+)-(\d+)$/.exec(text);
  if (!match) throw new Error(`a region is contig:start-end, got ${text}`);
  return [match[1], Number(match[2]) - 1, Number(match[3])];
}
