// Read alignments from a genoflow server with @gmod/bam (the reader Gosling and JBrowse use),
// by HTTP Range over the BAM and its index:
//
//   node read_bam.mjs DATA_URL INDEX_URL bai|csi REGION...
//
// REGION is contig:start-end, 1-based inclusive as `samtools view` takes it. Prints one JSON
// object: {regions: {REGION: [{name, flag, pos, cigar}]}, requests: [{url, range, status}]},
// where pos is 1-based like SAM's POS.
import { BamFile } from "@gmod/bam";
import { RemoteFile } from "generic-filehandle2";
import { parseRegion, recordingFetch } from "./ranged_fetch.mjs";

const [dataUrl, indexUrl, kind, ...regions] = process.argv.slice(2);
if (!dataUrl || !indexUrl || !["bai", "csi"].includes(kind) || regions.length === 0) {
  console.error("usage: node read_bam.mjs DATA_URL INDEX_URL bai|csi REGION...");
  process.exit(2);
}

const requests = [];
const fetch = recordingFetch(requests);
const bam = new BamFile({
  bamFilehandle: new RemoteFile(dataUrl, { fetch }),
  [`${kind}Filehandle`]: new RemoteFile(indexUrl, { fetch }),
});
await bam.getHeader();

const found = {};
for (const region of regions) {
  const [contig, start, end] = parseRegion(region);
  const records = await bam.getRecordsForRange(contig, start, end);
  found[region] = records.map((record) => ({
    name: record.name,
    flag: record.flags,
    pos: record.start + 1,
    cigar: record.CIGAR,
  }));
}
console.log(JSON.stringify({ regions: found, requests }));
