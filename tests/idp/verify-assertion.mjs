// An independent verifier of tailpass identity assertions, as an upstream
// written in Node would be: jose (panva/jose, pinned in package.json)
// fetches the JWKS from tailpass's admin listener and verifies each token.
//
// Input (stdin, JSON):
//   { "jwks_url": "http://127.0.0.1:PORT/.well-known/jwks.json",
//     "cases": [ { "token": "...", "issuer": "...", "audience": "...",
//                  "current_date": 1700000000 (optional, Unix seconds) } ] }
// Output (stdout, JSON): one result per case, in order:
//   { "ok": true, "header": {...}, "payload": {...} }
//   { "ok": false, "code": "ERR_...", "claim": "exp" | undefined, "message": "..." }
//
// Every case checks: the signature against the served JWKS (key chosen by
// `kid`), alg ES256 only, iss, aud, and exp/nbf against the clock (the real
// one unless current_date is given).

import { createRemoteJWKSet, jwtVerify } from "jose";

const input = JSON.parse(await new Promise((resolve, reject) => {
  let data = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (c) => { data += c; });
  process.stdin.on("end", () => resolve(data));
  process.stdin.on("error", reject);
}));

const jwks = createRemoteJWKSet(new URL(input.jwks_url));
const results = [];
for (const c of input.cases) {
  try {
    const options = {
      algorithms: ["ES256"],
      issuer: c.issuer,
      audience: c.audience,
      requiredClaims: ["iss", "aud", "sub", "exp", "iat", "jti"],
    };
    if (c.current_date !== undefined) {
      options.currentDate = new Date(c.current_date * 1000);
    }
    const { payload, protectedHeader } = await jwtVerify(c.token, jwks, options);
    if (typeof protectedHeader.kid !== "string" || protectedHeader.kid === "") {
      throw Object.assign(new Error("no kid in the JOSE header"), { code: "NO_KID" });
    }
    results.push({ ok: true, header: protectedHeader, payload });
  } catch (e) {
    results.push({ ok: false, code: e.code ?? "ERROR", claim: e.claim, message: String(e.message) });
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
