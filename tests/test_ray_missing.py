"""Without Ray installed, the ray extra says which pip install is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Runs in a child interpreter where `import ray` fails, whether or not Ray is installed here.
_WITHOUT_RAY = textwrap.dedent(
    """
    import asyncio, sys
    sys.modules["ray"] = None  # import ray -> ImportError
    try:
        import clipperlite.ray
    except ImportError as exc:
        print("import:", exc)
    import clipperlite

    async def main():
        async with clipperlite.Clipper() as clipper:
            try:
                await clipper.deploy_model("m", 1, "doubles", len, backend="ray")
            except clipperlite.ClipperError as exc:
                print("deploy:", exc)

    asyncio.run(main())
    """
)


def test_missing_ray_names_the_install_line() -> None:
    """import clipperlite.ray and backend="ray" both say: pip install 'clipperlite[ray]'."""
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_RAY], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["import", "deploy"]
    assert all("pip install 'clipperlite[ray]'" in line for line in lines)
