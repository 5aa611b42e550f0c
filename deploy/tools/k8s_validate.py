"""Validate rendered Kubernetes manifests with kubernetes-validate; print a JSON report.

    <tools python> deploy/tools/k8s_validate.py --strict -k 1.30 -k 1.37 rendered.yaml

Runs under the interpreter `chart_tools.ensure_tools_python()` installs (it has kubernetes-validate
and PyYAML). Prints one JSON object on stdout:

    {"documents": [<every manifest, parsed>],
     "errors": ["<kind>/<name> on 1.30: <path>: <message>", ...],
     "no_schema": ["<apiVersion> <kind>", ...]}   # kinds kubernetes-validate has no schema for (CRDs)

and exits 0 when it could validate (errors or not), 2 when the input is unreadable.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any

import kubernetes_validate.utils as kv  # type: ignore[import-not-found]
import yaml  # type: ignore[import-untyped]

# kubernetes-validate re-reads and re-parses the (large) schema files for every document; one
# read per file is enough for a whole run.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate(documents: list[dict[str, Any]], versions: list[str], strict: bool) -> tuple[list[str], list[str]]:
    """(errors, kinds without a schema) of `documents` against each of `versions`."""
    errors: list[str] = []
    no_schema: set[str] = set()
    for version in versions:
        for doc in documents:
            try:
                kv.validate(doc, version, strict)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{_name(doc)} on {version}: {path}: {e.message}")
            except kv.SchemaNotFoundError:
                no_schema.add(f"{doc.get('apiVersion')} {doc.get('kind')}")
    return errors, sorted(no_schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--kubernetes-version", action="append", required=True)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("manifest")
    args = parser.parse_args(argv)
    try:
        with open(args.manifest) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
    except (OSError, yaml.YAMLError) as e:
        print(f"k8s_validate: cannot read {args.manifest}: {e}", file=sys.stderr)
        return 2
    errors, no_schema = validate(documents, args.kubernetes_version, args.strict)
    json.dump({"documents": documents, "errors": errors, "no_schema": no_schema}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
