// Skiff demo site: marks the current page in the navigation and adds a
// copy button to code blocks. No frameworks, nothing fetched.
(function () {
  "use strict";

  // "/docs/index.html" and "/docs/" are the same page, and so are
  // "/index.html" and "/".
  function normalize(path) {
    return path.replace(/index\.html$/, "");
  }

  function markCurrentPage() {
    var here = normalize(window.location.pathname);
    var links = document.querySelectorAll(".site-nav a");
    for (var i = 0; i < links.length; i++) {
      var link = links[i];
      var target = normalize(new URL(link.href, window.location.href).pathname);
      if (target === here) {
        link.setAttribute("aria-current", "page");
      } else {
        link.removeAttribute("aria-current");
      }
    }
  }

  function addCopyButtons() {
    if (!navigator.clipboard || !window.isSecureContext) {
      return;
    }
    var blocks = document.querySelectorAll("pre > code");
    for (var i = 0; i < blocks.length; i++) {
      (function (code) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "copy";
        button.textContent = "Copy";
        button.setAttribute("aria-label", "Copy this code");
        button.addEventListener("click", function () {
          var text = code.innerText.replace(/^\$ /gm, "");
          navigator.clipboard.writeText(text).then(
            function () {
              button.textContent = "Copied";
              window.setTimeout(function () {
                button.textContent = "Copy";
              }, 1500);
            },
            function () {
              button.textContent = "Failed";
            }
          );
        });
        code.parentNode.appendChild(button);
      })(blocks[i]);
    }
  }

  function start() {
    markCurrentPage();
    addCopyButtons();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
