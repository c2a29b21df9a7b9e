// A real OpenID provider for reclaim's tests: node-oidc-provider (npm `oidc-provider`, a certified
// OpenID Connect implementation), with the client credentials grant, RFC 7009 revocation and
// RFC 7662 introspection on, and one confidential client.
//
// It publishes its endpoints only at /.well-known/openid-configuration (not at RFC 8414's
// /.well-known/oauth-authorization-server) and serves revocation at /token/revocation and
// introspection at /token/introspection: what OAuthGrant has to discover.
//
// Configuration, from the environment (never argv: the client secret must not show in `ps`):
//   OIDC_PORT                the loopback port to listen on (required)
//   OIDC_CLIENT_ID           the client's id (required)
//   OIDC_CLIENT_SECRET       the client's secret (required)
//   OIDC_TOKEN_TTL           seconds an access token lives (default 300)
//   OIDC_NO_REVOCATION=1     turn revocation off (a provider whose tokens cannot be revoked)
// It prints `listening <issuer>` once it accepts connections, then `event <name> <client id>`
// for each client-credentials token saved (issued) or destroyed (revoked), and exits on SIGTERM.
import Provider from "oidc-provider";

const need = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
};

const port = Number(need("OIDC_PORT"));
const issuer = `http://127.0.0.1:${port}`;
const ttl = Number(process.env.OIDC_TOKEN_TTL || "300");

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: need("OIDC_CLIENT_ID"),
      client_secret: need("OIDC_CLIENT_SECRET"),
      grant_types: ["client_credentials"],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: process.env.OIDC_NO_REVOCATION !== "1" },
  },
  scopes: ["api:read"],
  ttl: { ClientCredentials: ttl },
  // Fixed test keys: this provider is for loopback tests only.
  cookies: { keys: ["reclaim-tests-only-not-a-secret"] },
});

// What the tests read back from the log: one line per token issued or destroyed (revoked),
// with its kind and client, never the token.
for (const event of ["client_credentials.saved", "client_credentials.destroyed"]) {
  provider.on(event, (token) => console.log(`event ${event} ${token.clientId}`));
}
provider.on("server_error", (_ctx, error) => console.error(`server_error ${error}`));

const server = provider.listen(port, "127.0.0.1", () => {
  console.log(`listening ${issuer}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
