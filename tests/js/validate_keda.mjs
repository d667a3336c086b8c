// KEDA objects checked against KEDA's CRD schemas (@kubernetes-models/keda): reads a JSON array of objects on
// stdin, prints a JSON array with null for each valid one and the validation error's text for the others.
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const kinds = { ScaledObject, TriggerAuthentication };
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((object) => {
  const Kind = kinds[object.kind];
  if (!Kind) return `not a KEDA kind this checks: ${object.kind}`;
  try {
    new Kind(object).validate();
    return null;
  } catch (error) {
    return String(error && error.message ? error.message : error) + " " + JSON.stringify(error.errors ?? []);
  }
});
console.log(JSON.stringify(results));
