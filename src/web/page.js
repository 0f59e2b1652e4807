// latchkey approval page. Runs the WebAuthn ceremony of a form of class "signed", then posts
// the form with the browser's standard JSON of the credential (PublicKeyCredential.toJSON()).
// The daemon renders every page; this script only asks for challenges and touches keys.
"use strict";
(() => {
  const status = (text) => {
    const line = document.getElementById("status");
    if (line) line.textContent = text;
  };
  // The operator name is remembered for convenience only (it grants nothing); a browser that
  // blocks storage just asks again.
  const remember = (name) => {
    try {
      if (name === undefined) return localStorage.getItem("latchkey.operator") || "";
      localStorage.setItem("latchkey.operator", name);
    } catch (e) {
      return "";
    }
    return name;
  };
  const remembered = remember();
  for (const input of document.querySelectorAll("input[name=operator]")) {
    if (!input.value) input.value = remembered;
  }

  async function sign(form, purpose) {
    const data = new FormData(form);
    const operator = String(data.get("operator") || "").trim();
    remember(operator);
    status("Asking latchkeyd for a challenge…");
    const response = await fetch("/api/begin", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        purpose,
        operator,
        target: form.dataset.target || "",
        reason: String(data.get("reason") || ""),
      }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(`${answer.code}: ${answer.message}`);
    status("Touch your security key…");
    const publicKey = answer.options.publicKey;
    const credential =
      purpose === "enroll"
        ? await navigator.credentials.create({
            publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(publicKey),
          })
        : await navigator.credentials.get({
            publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(publicKey),
          });
    form.elements.ceremony_id.value = answer.ceremony_id;
    form.elements.credential.value = JSON.stringify(credential.toJSON());
    if (form.elements.decision) form.elements.decision.value = purpose;
    status("Sending…");
    HTMLFormElement.prototype.submit.call(form);
  }

  const start = (form, purpose) => {
    const buttons = form.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    sign(form, purpose).catch((e) => {
      const why =
        e.name === "NotAllowedError"
          ? "the key was not touched in time, or the browser refused it"
          : `${e.name === "Error" ? "" : e.name + ": "}${e.message}`;
      status(`Not done: ${why}`);
      console.error(`latchkey: ${e.name}: ${e.message}`);
      for (const b of buttons) b.disabled = false;
    });
  };

  for (const form of document.querySelectorAll("form.signed")) {
    const vote = form.dataset.purpose === "vote";
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      // Enter in a vote form decides nothing: Approve and Deny are pressed, never implied.
      if (vote) status("Press Approve or Deny.");
      else start(form, form.dataset.purpose);
    });
    if (vote) {
      for (const button of form.querySelectorAll("button[value]")) {
        button.addEventListener("click", () => start(form, button.value));
      }
    }
  }
})();
