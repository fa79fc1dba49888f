// Soma console: behaviour every page shares. Pages work without it; it
// only adds confirmations. Page-specific scripts (live runs) are separate
// files listed in assets.rs.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const message = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
