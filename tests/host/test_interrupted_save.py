"""A save killed between writing its temp file and the rename leaves the old file intact and nothing listed."""

import os
import signal
import subprocess
import sys
import textwrap

import torch

from devkit.adapters import library
from devkit.host import ROOT, import_pack, loras_folder

KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import torch
    import ortho_hydra
    from ortho_hydra import atomic
    sys.path.insert(0, {units!r})
    from factories import adapter

    def die_before_rename(src, dst):
        assert os.path.getsize(src) > 0  # the temp file is fully written
        os.kill(os.getpid(), signal.SIGKILL)

    atomic.os.replace = die_before_rename
    ortho_hydra.save(adapter(num_layers=2, experts=3, rank=4, names=["new", "newer", "newest"]), {path!r})
""")


def test_a_save_killed_before_the_rename_keeps_the_old_file_and_lists_no_temp(tmp_path):
    lib = library()
    folder = tmp_path / "loras"
    folder.mkdir()
    path = folder / "kept_moe.safetensors"
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from factories import adapter

    original = adapter(num_layers=2, experts=3, rank=4, names=["old", "older", "oldest"])
    lib.save(original, path)
    before = path.read_bytes()
    script = KILLED_SAVE.format(root=str(ROOT), units=str(ROOT / "tests" / "unit"), path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert path.read_bytes() == before  # the old file, byte for byte
    reloaded = lib.load(path)
    assert reloaded.expert_names == ("old", "older", "oldest")
    for name, layer in original.layers.items():
        torch.testing.assert_close(reloaded.layers[name].ups, layer.ups)
    leftovers = [p.name for p in folder.iterdir() if p.name != path.name]
    assert leftovers and all(n.startswith(".") and n.endswith(".tmp") for n in leftovers)  # the temp stayed ...
    with loras_folder(folder):
        listed = import_pack().nodes.adapter_files.adapter_choices()
    assert path.name in listed and not any(n in listed for n in leftovers)  # ... but nothing lists it
    assert os.path.exists(folder / leftovers[0])
