// Read lines of a bgzipped, tabix-indexed file (VCF, BED, GFF…) from a genoflow server with
// @gmod/tabix, by HTTP Range over the data and its index:
//
//   node read_tabix.mjs DATA_URL INDEX_URL tbi|csi REGION...
//
// REGION is contig:start-end, 1-based inclusive as `tabix` takes it. Prints one JSON object:
// {header: "...", regions: {REGION: ["line", ...]}, requests: [{url, range, status}]}.
import { TabixIndexedFile } from "@gmod/tabix";
import { RemoteFile } from "generic-filehandle2";
import { parseRegion, recordingFetch } from "./ranged_fetch.mjs";

const [dataUrl, indexUrl, kind, ...regions] = process.argv.slice(2);
if (!dataUrl || !indexUrl || !["tbi", "csi"].includes(kind) || regions.length === 0) {
  console.error("usage: node read_tabix.mjs DATA_URL INDEX_URL tbi|csi REGION...");
  process.exit(2);
}

const requests = [];
const fetch = recordingFetch(requests);
const file = new TabixIndexedFile({
  filehandle: new RemoteFile(dataUrl, { fetch }),
  [`${kind}Filehandle`]: new RemoteFile(indexUrl, { fetch }),
});
const header = await file.getHeader();

const found = {};
for (const region of regions) {
  const [contig, start, end] = parseRegion(region);
  const lines = [];
  await file.getLines(contig, start, end, (line) => lines.push(line));
  found[region] = lines;
}
console.log(JSON.stringify({ header, regions: found, requests }));
