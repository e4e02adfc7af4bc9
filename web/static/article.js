// The article view: bring the cited passage to the middle of the screen and give it focus,
// so keyboard and screen-reader users start reading there.
(function () {
  "use strict";
  var passage = document.getElementById("passage");
  if (!passage) return;
  var reduce = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  function show() {
    passage.scrollIntoView({ block: "center", behavior: reduce ? "auto" : "smooth" });
    passage.focus({ preventScroll: true });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", show);
  } else {
    show();
  }
  document.querySelectorAll('a[href="#passage"]').forEach(function (a) {
    a.addEventListener("click", function (e) { e.preventDefault(); show(); });
  });
})();
