// Validates Prometheus Operator resources with @kubernetes-models/prometheus-operator, whose
// validators are compiled from the operator's CRD schemas (types, enums, patterns, required
// fields). Those schemas leave unknown fields open, so tests/test_helm.py also
// type-checks the same resources with tsc, whose excess-property check refuses them.
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
