"""Give a container build the package sources this host's pip uses, as podman build arguments.

Hosts with no route to PyTorch's wheel index, or with a local mirror (file:// indexes, a
find-links folder of wheels, a constraints file), configure pip for it; a build container sees
none of that. This reads the host's effective pip configuration (``pip config list``), writes an
equivalent pip.conf into ``--conf-dir``, and prints one argument per line for ``podman build``:
a read-only ``--volume`` for that pip.conf (at /etc/pip.conf, which pip in the build reads) and
for every local folder or file it names, mounted at the same path, plus
``--build-arg TORCH_INDEX_URL=...`` so the export stage looks for the CPU torch on the host's
index instead of download.pytorch.org. Volumes given to ``podman build`` exist only while a
RUN step runs: nothing of the host's ends up in an image layer.

    python3 deploy/podman/pip_sources.py --conf-dir /tmp/x     # prints the arguments

No configuration (a plain pip on the internet) prints nothing but the TORCH_INDEX_URL default.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

# pip's keys whose values are local paths (or file:// URLs) that must be visible in the build.
PATH_KEYS = ("find-links", "constraint", "requirement", "cert", "index-url", "extra-index-url")
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def host_config(pip: list[str]) -> dict[str, str]:
    """``pip config list`` as {key: value}, keys without their section, env vars included."""
    out = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, check=False)
    config: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.rsplit(".", 1)[-1]  # global.find-links / :env:.find-links -> find-links
        config[key] = value.strip().strip("'\"")
    return config


def local_paths(value: str) -> list[Path]:
    """The existing local folders/files a pip value names (space-separated; file:// or plain)."""
    paths = []
    for item in value.split():
        parsed = urlparse(item)
        if parsed.scheme == "file":
            path = Path(parsed.path)
        elif parsed.scheme == "" and item.startswith("/"):
            path = Path(item)
        else:
            continue
        if path.exists():
            paths.append(path)
    return paths


def build_arguments(config: dict[str, str], conf_dir: Path) -> list[str]:
    args: list[str] = []
    mounts: set[Path] = set()
    keep = {k: v for k, v in config.items() if k in PATH_KEYS or k in ("default-timeout", "trusted-host")}
    for key in PATH_KEYS:
        for path in local_paths(config.get(key, "")):
            # A file:// index's "simple" folder links to files beside it: mount its parent too.
            mounts.add(path.parent if key.endswith("index-url") and path.name == "simple" else path)
    if keep:
        conf_dir.mkdir(parents=True, exist_ok=True)
        conf = conf_dir / "pip.conf"
        conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(keep.items())))
        args.append(f"--volume={conf}:/etc/pip.conf:ro")
    for path in sorted(mounts):
        args.append(f"--volume={path}:{path}:ro")
    index = config.get("index-url")
    # With a local mirror the host's own index is where the CPU torch is found; otherwise
    # PyTorch's CPU index (the Dockerfile's default).
    torch_index = index or ("https://pypi.org/simple" if mounts else PYTORCH_CPU_INDEX)
    args.append(f"--build-arg=TORCH_INDEX_URL={torch_index}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf-dir", type=Path, required=True, help="where pip.conf is written")
    parser.add_argument("--pip", default=f"{sys.executable} -m pip", help="the host's pip command")
    args = parser.parse_args(argv)
    for line in build_arguments(host_config(args.pip.split()), args.conf_dir):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
