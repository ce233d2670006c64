// hwpass issuer page: the copy button. Served from the binary (CSP script-src 'self').
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("copy");
  const pass = document.getElementById("pass");
  if (!button || !pass) return;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(pass.value);
    } catch (_) {
      // No clipboard permission (plain HTTP, some browsers): select it and use the old path.
      pass.focus();
      pass.select();
      document.execCommand("copy");
    }
    button.textContent = "Copied";
  });
});
