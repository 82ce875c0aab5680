// The /view/{id} page: create an igv.js browser from the settings the server wrote into the
// page (a <script type="application/json" id="genoflow-view"> block), then expose it as
// window.genoflowBrowser and mark <body data-view="ready"> (or "failed", with the reason in
// #status), so that a person reads what happened and a test can wait on it.
"use strict";

(function () {
  const settings = JSON.parse(document.getElementById("genoflow-view").textContent);
  const status = document.getElementById("status");
  igv
    .createBrowser(document.getElementById("igv"), settings.igv)
    .then(function (browser) {
      window.genoflowBrowser = browser;
      document.body.dataset.view = "ready";
    })
    .catch(function (error) {
      status.textContent = "igv.js could not show this artifact: " + (error.message || error);
      status.className = "error";
      document.body.dataset.view = "failed";
    });
})();
