// Validates Prometheus Operator resources with @kubernetes-models/prometheus-operator 6.0.0,
// whose models are generated (go-generate) from the operator's Go API types, the same
// types the operator's CRDs are generated from: package pkg/apis/monitoring at
// prometheus-operator v0.91.0 (the package's changelog for 6.0.0, "Switch to go-generate
// ... prometheus-operator v0.91.0", and its go.mod in github.com/tommy351/kubernetes-models-ts,
// third-party/prometheus-operator), not the CRD files. Its validators check types, enums,
// patterns and required fields, but leave unknown fields open as the CRDs do, so
// tests/test_helm.py also type-checks the same resources with tsc, whose excess-property
// check refuses them.
//
// Node: ./scripts/test installs Debian's nodejs, 18.20.4 on bookworm, although these
// packages declare engines node >= 22 (npm only warns). A reviewer ran this check and the
// tsc check under Debian's node 18.20.4 and got the same verdicts as under a newer node for
// every rendered resource and every mutation in tests/test_helm.py; the tests name the node they
// ran with (`node --version`) in their failure messages, so a difference would show.
//
// Usage: node validate.js FILE  (FILE: JSON object, name -> resource)
// Prints a JSON object, name -> list of errors (empty when valid); exits 0 unless it crashed.
import { readFileSync } from "node:fs";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const MODELS = { PrometheusRule, ServiceMonitor };
const resources = JSON.parse(readFileSync(process.argv[2], "utf8"));
const verdicts = {};
for (const [name, resource] of Object.entries(resources)) {
  const Model = MODELS[resource.kind];
  if (!Model || resource.apiVersion !== Model.apiVersion) {
    verdicts[name] = [`not a known kind: ${resource.apiVersion} ${resource.kind}`];
    continue;
  }
  try {
    new Model(resource).validate();
    verdicts[name] = [];
  } catch (error) {
    const details = error.errors ?? [{ instancePath: "", message: String(error) }];
    verdicts[name] = details.map((e) => `${e.instancePath || "/"}: ${e.message}`);
  }
}
process.stdout.write(JSON.stringify(verdicts));
