"""Screenshots of the Prefect UI for docs/screenshots/ (headless Chromium, no network).

Every page is taken in the UI that ``/`` opens (Prefect 3.8's classic UI; the newer one
under ``/v2`` is not what a person reaches from the address ``up`` prints).

Needs a running server with the deployments and at least one finished
``finetune-and-deploy`` run (``chatft server up``, then one run), and
Chromium (Debian: ``apt-get install -y chromium``). The smoke-test deployment's Upcoming
tab shows the runs the scheduler created from its hourly schedule.

``--rollout`` takes the release pages instead: the artifacts of the latest canary
release that was watched (``rollout-gate``, ``rollout-canary``, ``rollout-decision``)
and the latest run the gate refused. Make them
with ``make demo``, ``make demo-rollout`` and ``make demo`` again, with
``PREFECT_API_URL`` set to the server.

``--release`` takes the pages of docs/rollout.md's "Steering a release": the
``release-control`` deployment's run form (Run -> Custom run) and the newest
``release-history`` artifact. Make that with a ``release-control`` run through the server,
e.g. ``prefect deployment run release-control/release-control --params
'{"request": {"endpoint_name": "chatft-demo", "action": "status"}}'``.

    python scripts/screenshots.py                       # server at http://127.0.0.1:4200
    python scripts/screenshots.py --url http://127.0.0.1:4311 --out docs/screenshots
    python scripts/screenshots.py --url http://127.0.0.1:4300 --rollout
    python scripts/screenshots.py --url http://127.0.0.1:4377 --release
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

PROJECT_DIR = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1440,1000", "--virtual-time-budget=15000",
]


def api(url: str, path: str, body: dict | None = None) -> Any:
    """GET (or POST ``body`` to) the server's REST API."""
    if body is None:
        response = httpx.get(f"{url}/api{path}", timeout=30)
    else:
        response = httpx.post(f"{url}/api{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def pages(url: str) -> dict[str, str]:
    """File name -> UI address of each page to capture."""
    deployment = api(url, "/deployments/name/finetune-and-deploy/finetune-and-deploy")
    smoke = api(url, "/deployments/name/smoke-test-endpoints/smoke-test-endpoints")
    runs = api(url, "/flow_runs/filter", {
        "deployments": {"id": {"any_": [deployment["id"]]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "END_TIME_DESC", "limit": 1,
    })
    if not runs:
        raise SystemExit("no completed finetune-and-deploy run yet: start one and wait for it")
    run_id = runs[0]["id"]
    def artifact_of_run(key: str) -> list[dict]:
        return api(url, "/artifacts/filter", {
            "artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run_id]}},
            "limit": 1,
        })
    # The UI that `/` opens (the classic one), the one a person reaches from up's address.
    ui = url
    shots = {
        "deployments.png": f"{ui}/deployments",
        "finetune-run-form.png": f"{ui}/deployments/deployment/{deployment['id']}/run",
        # The classic run page opens on its Logs tab whatever ?tab= says (the tab is hidden
        # until the run is loaded), so the run page shows its graph and log; the artifacts
        # are taken on their own pages.
        "finetune-run.png": f"{ui}/runs/flow-run/{run_id}",
        "smoke-test-upcoming.png": f"{ui}/deployments/deployment/{smoke['id']}?tab=Upcoming",
    }
    for key in ("finetune-metrics", "sample-score"):
        if found := artifact_of_run(key):
            shots[f"{key}-artifact.png"] = f"{ui}/artifacts/artifact/{found[0]['id']}"
    return shots


def rollout_pages(url: str) -> dict[str, str]:
    """File name -> classic-UI address of each release page to capture."""
    canaries = api(url, "/artifacts/filter", {
        "artifacts": {"key": {"any_": ["rollout-canary"]}}, "sort": "CREATED_DESC", "limit": 1,
    })
    if not canaries:
        raise SystemExit("no watched canary release yet: run make demo, then make demo-rollout")
    run_id = canaries[0]["flow_run_id"]
    shots = {}
    for key in ("rollout-gate", "rollout-canary", "rollout-decision"):
        found = api(url, "/artifacts/filter", {
            "artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run_id]}},
            "limit": 1,
        })
        shots[f"{key}.png"] = f"{url}/artifacts/artifact/{found[0]['id']}"
    rejected = api(url, "/flow_runs/filter", {
        "flow_runs": {"state": {"name": {"any_": ["Rejected"]}}},
        "sort": "END_TIME_DESC", "limit": 1,
    })
    if rejected:
        shots["rollout-rejected-run.png"] = f"{url}/runs/flow-run/{rejected[0]['id']}"
    return shots


def release_pages(url: str) -> dict[str, str]:
    """File name -> classic-UI address of each page of a person steering a release."""
    deployment = api(url, "/deployments/name/release-control/release-control")
    histories = api(url, "/artifacts/filter", {
        "artifacts": {"key": {"any_": ["release-history"]}}, "sort": "CREATED_DESC", "limit": 1,
    })
    if not histories:
        raise SystemExit("no release-history artifact yet: run release-control with action status")
    return {
        "release-control-form.png": f"{url}/deployments/deployment/{deployment['id']}/run",
        "release-history.png": f"{url}/artifacts/artifact/{histories[0]['id']}",
    }


def shoot(chromium: str, address: str, target: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--screenshot={target}", address],
            check=True, capture_output=True, timeout=120,
        )
    shrink(target)


def shrink(path: Path, colors: int = 128) -> None:
    """Quantize the PNG (UI screenshots have few colours) so it stays small in git."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:4200", help="Prefect UI address")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "docs" / "screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rollout", action="store_true", help="the release pages only")
    mode.add_argument("--release", action="store_true",
                      help="the release-control form and release history only")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rollout:
        shots = rollout_pages(url)
    elif args.release:
        shots = release_pages(url)
    else:
        shots = pages(url)
    for name, address in shots.items():
        shoot(args.chromium, address, args.out / name)
        print(f"{args.out / name}  {(args.out / name).stat().st_size // 1024} KB  <- {address}")


if __name__ == "__main__":
    main()
