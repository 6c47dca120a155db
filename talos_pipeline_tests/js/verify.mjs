#!/usr/bin/env node
// Second, independent verifier for the Sigstore bundles talos-pipeline writes, built on
// sigstore-js (@sigstore/verify + @sigstore/bundle + @sigstore/protobuf-specs). Offline only.
// Bundles of both contents: a file's signature (messageSignature) and a provenance attestation
// (dsseEnvelope around an in-toto statement, `<file>.intoto.sigstore.json`).
//
// Keyless:  node verify.mjs --bundle B --artifact F --trusted-root R (--san S | --san-regexp RE) --issuer I
// Key mode: node verify.mjs --bundle B --artifact F --key PUB.pem
// An attestation (B = F.intoto.sigstore.json) takes the same options, and optionally --predicate-type URI.
//
// Keyless bundles are checked by @sigstore/verify against the given trusted_root.json:
// certificate chain at the Rekor integrated time, embedded SCT, Rekor SET, inclusion proof
// and signed checkpoint, tlog body vs bundle, signature over the artifact, then the policy
// (SAN and the Fulcio issuer extension). Key bundles (publicKey hint, no tlog entry) are also
// checked by @sigstore/verify, with the given PEM public key registered under the bundle's
// hint and the tlog/timestamp thresholds set to 0 (as `cosign --insecure-ignore-tlog`).
// In both modes this script also checks messageDigest against sha256(artifact), which
// sigstore-js leaves out but cosign enforces. For an attestation sigstore-js checks the DSSE
// signature over the statement, not which file the statement is about; this script checks what
// `cosign verify-blob-attestation` checks besides: the payload is an in-toto statement, one of its
// subjects has sha256(artifact), and (with --predicate-type) its predicateType.
//
// Exit 0 and a line starting "OK" on success; exit 1 and a line starting "FAIL" otherwise.

import { createHash, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { bundleFromJSON } from '@sigstore/bundle';
import { TrustedRoot } from '@sigstore/protobuf-specs';
import { Verifier, toSignedEntity, toTrustMaterial } from '@sigstore/verify';

const USAGE =
  'usage: node verify.mjs --bundle B --artifact F ' +
  '[--trusted-root R (--san S | --san-regexp RE) --issuer I | --key PUB.pem] [--predicate-type URI]';

function fail(message, code = 1) {
  console.error(`FAIL: ${message}`);
  process.exit(code);
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

function describeError(err) {
  let text = err?.code ? `${err.code}: ${err.message}` : String(err?.message ?? err);
  if (err?.cause) text += ` (cause: ${err.cause.message ?? err.cause})`;
  return text;
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      bundle: { type: 'string' },
      artifact: { type: 'string' },
      'trusted-root': { type: 'string' },
      san: { type: 'string' },
      'san-regexp': { type: 'string' },
      issuer: { type: 'string' },
      key: { type: 'string' },
      'predicate-type': { type: 'string' },
    },
    strict: true,
  }));
} catch (err) {
  fail(`${err.message}\n${USAGE}`, 2);
}

if (!args.bundle || !args.artifact) fail(`--bundle and --artifact are required\n${USAGE}`, 2);

let bundleJSON;
let artifact;
try {
  bundleJSON = JSON.parse(readFileSync(args.bundle, 'utf8'));
  artifact = readFileSync(args.artifact);
} catch (err) {
  fail(`cannot read inputs: ${err.message}`, 2);
}

let bundle;
try {
  bundle = bundleFromJSON(bundleJSON);
} catch (err) {
  fail(`${args.bundle} is not a valid Sigstore bundle: ${describeError(err)}`);
}

const digest = createHash('sha256').update(artifact).digest();
const attestation = bundle.content.$case === 'dsseEnvelope';
let what = 'bundle';
if (attestation) {
  // cosign checks that the statement is about this file; sigstore-js only checks its signature.
  const envelope = bundle.content.dsseEnvelope;
  if (envelope.payloadType !== 'application/vnd.in-toto+json') {
    fail(`the DSSE payload type is ${envelope.payloadType}, not application/vnd.in-toto+json`);
  }
  let statement;
  try {
    statement = JSON.parse(Buffer.from(envelope.payload).toString('utf8'));
  } catch (err) {
    fail(`the DSSE payload is not JSON: ${err.message}`);
  }
  if (statement._type !== 'https://in-toto.io/Statement/v1') fail(`not an in-toto v1 statement: ${statement._type}`);
  const subjects = (statement.subject ?? []).map((s) => s?.digest?.sha256);
  if (!subjects.includes(digest.toString('hex'))) {
    fail(
      `subject digest mismatch: the statement is about sha256 ${subjects.join(', ') || '(none)'}, ` +
        `${args.artifact} has sha256 ${digest.toString('hex')}`,
    );
  }
  if (args['predicate-type'] && statement.predicateType !== args['predicate-type']) {
    fail(`predicate type ${statement.predicateType}, expected ${args['predicate-type']}`);
  }
  what = `attestation (${statement.predicateType})`;
} else {
  // cosign checks the recorded digest; sigstore-js only checks the signature over the bytes.
  const recorded = bundle.content?.messageSignature?.messageDigest?.digest;
  if (!recorded || !Buffer.from(recorded).equals(digest)) {
    fail(
      `message digest mismatch: bundle records sha256 ` +
        `${recorded ? Buffer.from(recorded).toString('hex') : '(none)'}, ` +
        `${args.artifact} has sha256 ${digest.toString('hex')}`,
    );
  }
}

const keyMode = bundle.verificationMaterial.content.$case === 'publicKey';
const emptyRoot = {
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: [],
};

try {
  if (keyMode) {
    if (!args.key) fail('bundle is a key-mode bundle (publicKey hint, no certificate): pass --key PUB.pem', 2);
    const pem = readFileSync(args.key, 'utf8');
    const spki = createPublicKey(pem).export({ type: 'spki', format: 'der' });
    const hint = bundle.verificationMaterial.content.publicKey.hint;
    const ourHint = createHash('sha256').update(spki).digest('base64');
    if (hint && hint !== ourHint) {
      fail(`bundle was signed with key hint ${hint}, but ${args.key} has hint ${ourHint}`);
    }
    const trust = toTrustMaterial(TrustedRoot.fromJSON(emptyRoot), {
      [hint || ourHint]: { rawBytes: spki, keyDetails: 'PKIX_ECDSA_P256_SHA_256' },
    });
    const verifier = new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 });
    verifier.verify(toSignedEntity(bundle, artifact));
    console.log(
      `OK: key-mode ${what} verified by @sigstore/verify (public key ${ourHint}, no tlog) ` +
        `for ${args.artifact} sha256:${digest.toString('hex')}`,
    );
  } else {
    if (!args['trusted-root'] || !(args.san || args['san-regexp']) || !args.issuer) {
      fail(`keyless bundle: --trusted-root, --san or --san-regexp, and --issuer are required\n${USAGE}`, 2);
    }
    const root = TrustedRoot.fromJSON(JSON.parse(readFileSync(args['trusted-root'], 'utf8')));
    const trust = toTrustMaterial(root);
    const verifier = new Verifier(trust, { tlogThreshold: 1, ctlogThreshold: 1, timestampThreshold: 1 });
    const san = args.san ? `^${escapeRegExp(args.san)}$` : args['san-regexp'];
    const signer = verifier.verify(toSignedEntity(bundle, artifact), {
      subjectAlternativeName: san,
      extensions: { issuer: args.issuer },
    });
    const tlog = bundle.verificationMaterial.tlogEntries[0];
    console.log(
      `OK: keyless ${what} verified by @sigstore/verify: ${signer.identity?.subjectAlternativeName} ` +
        `(issuer ${signer.identity?.extensions?.issuer}), Rekor log index ${tlog?.logIndex} ` +
        `for ${args.artifact} sha256:${digest.toString('hex')}`,
    );
  }
} catch (err) {
  fail(describeError(err));
}
