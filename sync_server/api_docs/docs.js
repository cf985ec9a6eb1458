// Renders /openapi.json with the vendored Swagger UI (see README.md beside this file).
// A file, not an inline script: /docs runs under a CSP of script-src 'self'.
"use strict";

window.ui = SwaggerUIBundle({
  url: new URL("../openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
  displayRequestDuration: true,
  // The default sends the document to validator.swagger.io for a badge: nothing may leave.
  validatorUrl: null,
});
