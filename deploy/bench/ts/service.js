// A TypeScript-SDK deployment written as plain JavaScript, for deploy/bench/compare.py.
//
// Serves over HTTP/1.1 in request-response mode (node's http server, one request per attempt), or
// with SERVE=h2c the way the SDK's endpoint().listen() does: a plaintext HTTP/2 server (h2c only,
// no HTTP/1.1) whose manifest says BIDI_STREAM. Handlers:
//   Greeter/greet     returns "Hello, <name>!"
//   Greeter/with_run  one ctx.run step, then the greeting
//   Greeter/noop      returns nothing
//   Greeter/park      sleeps an hour (durable timer: the invocation suspends), then returns nothing
//   Greeter/nap       a 100 ms durable sleep, then the greeting
//   Greeter/relay     calls Greeter/greet (a call between two invocations), returns its answer
//
// Run:  PORT=9081 [SERVE=h2c] node service.js   (binds 127.0.0.1; HOST overrides). compare.py copies this file
// next to the node_modules it installs under .cache/compare/ts and starts it from there.
"use strict";

const http = require("node:http");
const http2 = require("node:http2");

// Node 20 lacks Promise.withResolvers (node 22 has it); newer SDK versions call it.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

function greeterService(restate) {
  let greeter = null;
  greeter = restate.service({
    name: "Greeter",
    handlers: {
      nap: async (ctx, name) => {
        await ctx.sleep(100);
        return `Hello, ${name}!`;
      },
      relay: async (ctx, name) => ctx.serviceClient(greeter).greet(name),
      greet: async (_ctx, name) => `Hello, ${name}!`,
      with_run: async (ctx, name) => {
        const upper = await ctx.run("upper", () => String(name).toUpperCase());
        return `Hello, ${upper}!`;
      },
      noop: async () => undefined,
      park: async (ctx) => {
        await ctx.sleep(3600 * 1000);
      },
    },
  });
  return greeter;
}

function http1Handler(restate, services) {
  const endpoint = restate.endpoint();
  for (const service of services) endpoint.bind(service);
  // http1Handler() answers in request-response mode; older SDKs only have the generic handler().
  if (typeof endpoint.http1Handler === "function") return endpoint.http1Handler();
  return endpoint.handler();
}

function h2cHandler(restate, services) {
  const endpoint = restate.endpoint();
  for (const service of services) endpoint.bind(service);
  // What endpoint().listen() serves, but bound to HOST rather than every interface.
  if (typeof endpoint.http2Handler === "function") return endpoint.http2Handler();
  return endpoint.handler();
}

async function main() {
  const restate = await import("@restatedev/restate-sdk");
  const port = Number.parseInt(process.env.PORT || "9080", 10);
  const host = process.env.HOST || "127.0.0.1";
  const h2c = process.env.SERVE === "h2c";
  const services = [greeterService(restate)];
  const server = h2c ? http2.createServer(h2cHandler(restate, services)) : http.createServer(http1Handler(restate, services));
  if (!h2c) {
    server.keepAliveTimeout = 120000;
    server.headersTimeout = 125000;
  }
  server.listen(port, host, () => {
    const address = server.address();
    console.log(`ts deployment listening on http://${host}:${address.port} (${h2c ? "h2c" : "HTTP/1.1"})`);
  });
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => process.exit(0));  // keep-alive connections would hold server.close()
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
