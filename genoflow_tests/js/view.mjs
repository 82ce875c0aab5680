// Open a genoflow /view/{id} page in headless Chromium and report, through igv.js's own API in
// the page, what its tracks loaded; save a screenshot.
//
//   node view.mjs CHROMIUM URL SCREENSHOT.png
//
// Prints one JSON object: {view: "ready"|"failed", status, locus, tracks: [{name, type, format,
// features, sample}], requests: [url...], failed: [url...], console: [text...]}. `requests`
// lists every URL the page asked for, so a caller can check that nothing left the server's
// origin (no CDN, no genome list). Exits 0 whenever the page was reported; the caller asserts.
import { chromium } from "playwright-core";

const [executablePath, url, screenshot] = process.argv.slice(2);
if (!executablePath || !url || !screenshot) {
  console.error("usage: node view.mjs CHROMIUM URL SCREENSHOT.png");
  process.exit(2);
}

const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--hide-scrollbars",
];

// Runs inside the page: what each igv.js track holds for the viewport on screen.
function describeTracks() {
  const browser = window.genoflowBrowser;
  const described = [];
  for (const trackView of browser.trackViews) {
    const track = trackView.track;
    if (!track || !track.url) continue; // the ruler, ideogram and sequence tracks
    const viewport = trackView.viewports[0];
    const cached = viewport.cachedFeatures;
    let features = [];
    if (Array.isArray(cached)) {
      features = cached; // annotation and variant tracks: the features themselves
    } else if (cached && typeof cached.allAlignments === "function") {
      features = cached.allAlignments(); // alignment tracks: an AlignmentContainer
    }
    const sample = features.slice(0, 5).map((feature) => ({
      chr: feature.chr,
      start: feature.start,
      end: feature.end ?? feature.start + feature.lengthOnRef,
      name: feature.readName || feature.name || feature.id || null,
    }));
    described.push({
      name: track.name,
      type: track.type,
      format: track.config.format,
      features: features.length,
      sample,
    });
  }
  return { locus: browser.currentLoci(), tracks: described };
}

// Runs inside the page: true once no track's viewport is still loading.
function settled() {
  const browser = window.genoflowBrowser;
  return browser.trackViews.every((trackView) =>
    trackView.viewports.every((viewport) => !viewport.loading),
  );
}

const launched = await chromium.launch({
  executablePath,
  headless: true,
  args: FLAGS,
  timeout: 60_000,
});
try {
  const context = await launched.newContext({ viewport: { width: 1400, height: 700 } });
  const page = await context.newPage();
  const requests = [];
  const failed = [];
  const consoleLines = [];
  page.on("request", (request) => requests.push(request.url()));
  page.on("requestfailed", (request) => failed.push(request.url()));
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));

  await page.goto(url, { waitUntil: "load", timeout: 60_000 });
  await page.waitForSelector("body[data-view]", { timeout: 60_000 });
  const view = await page.evaluate(() => document.body.dataset.view);
  const status = await page.evaluate(() => document.getElementById("status")?.textContent || "");
  let found = { locus: null, tracks: [] };
  if (view === "ready") {
    await page.waitForFunction(settled, null, { timeout: 60_000, polling: 100 });
    await page.waitForTimeout(300); // one more frame for the canvas the screenshot shows
    found = await page.evaluate(describeTracks);
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  const report = { view, status, ...found, requests, failed, console: consoleLines };
  console.log(JSON.stringify(report));
} finally {
  await launched.close();
}
