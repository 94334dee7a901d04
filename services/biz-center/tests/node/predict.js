// Calls the business center's Predict with the published proto (protos/), as any Node service would.
// Usage: node predict.js <host:port> <api-key> <protos-root> <scene> <unit-id> [attribute=value ...]
// Prints the PredictResponse as JSON, or {"code", "details"} and exits 2 when the call fails.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, apiKey, protosRoot, scene, unitId, ...pairs] = process.argv.slice(2);
const definition = protoLoader.loadSync(path.join(protosRoot, "infermesh/bizcenter/v1/biz_center.proto"), {
  includeDirs: [protosRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { BizCenterService } = grpc.loadPackageDefinition(definition).infermesh.bizcenter.v1;
const client = new BizCenterService(address, grpc.credentials.createInsecure());

const metadata = new grpc.Metadata();
metadata.set("x-api-key", apiKey);
const attributes = Object.fromEntries(pairs.map((pair) => pair.split("=", 2)));
const request = {
  scene,
  unit_id: unitId,
  attributes,
  features: { basket_amount: { double_value: 12.5 } },
};

client.Predict(request, metadata, { deadline: Date.now() + 5000 }, (error, response) => {
  if (error) {
    process.stdout.write(JSON.stringify({ code: error.code, details: error.details }) + "\n");
    process.exit(2);
  }
  process.stdout.write(JSON.stringify(response) + "\n");
  client.close();
});
