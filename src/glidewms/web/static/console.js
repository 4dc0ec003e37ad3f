// The console's only script: an opt-in refresh of the page every 30 s,
// remembered in this browser (localStorage). Nothing else runs here.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("autorefresh");
  if (!box) { return; }
  var key = "glidewms.autorefresh";
  box.checked = window.localStorage.getItem(key) === "1";
  var timer = null;
  function arm() {
    if (timer) { window.clearTimeout(timer); timer = null; }
    if (box.checked && !document.querySelector("form textarea")) {
      timer = window.setTimeout(function () { window.location.reload(); }, 30000);
    }
  }
  box.addEventListener("change", function () {
    window.localStorage.setItem(key, box.checked ? "1" : "0");
    arm();
  });
  arm();
});
