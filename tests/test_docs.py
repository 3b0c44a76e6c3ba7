"""The guided reading and the pictures cannot rot: every `file:function` that
docs/how-it-works.md names exists, and the mask the docs draw is the engine's own."""
import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "how-it-works.md"
REFERENCE = re.compile(r"`((?:tinfinite|tests|weights|bench|docs|examples)/[\w/]+\.py)(?::([\w.]+))?`")


def defined_names(path: Path) -> set[str]:
    """'name' for module-level functions and classes, 'Class.name' for their methods."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
    return names


def test_every_reference_exists():
    refs = REFERENCE.findall(GUIDE.read_text())
    assert len(refs) > 40  # the guide really is a tour of the code
    missing = [f"{f}:{n}" for f, n in refs
               if not (REPO / f).is_file() or (n and n not in defined_names(REPO / f))]
    assert not missing, missing


def test_the_first_screen_says_where_the_mask_is_built():
    first_screen = "\n".join(GUIDE.read_text().splitlines()[:12])
    for ref in ("tinfinite/attention.py:lambda_mask", "tinfinite/cache.py:LambdaCache.attend"):
        assert f"`{ref}`" in first_screen


def test_readme_links_the_guide_and_the_examples():
    readme = (REPO / "README.md").read_text()
    for target in ("docs/how-it-works.md", "examples/chat.py", "examples/long_document.py"):
        assert f"({target})" in readme and (REPO / target).is_file(), target


def test_the_drawn_mask_is_the_rule_and_the_docstring():
    """docs/pictures.py draws from the engine's builders; the picture in attention.py's
    docstring must be what it draws."""
    sys.path.insert(0, str(REPO / "docs"))
    from pictures import ascii_mask, distances, kinds
    n, g, w = 20, 3, 7
    k = kinds(n, g, w)
    for i in range(n):
        for j in range(n):
            want = 1 if 0 <= i - j < w else 2 if (j < g and i - j >= w) else 0
            assert k[i, j] == want, (i, j)
    d = distances(n, g, w)
    assert d[19, 0] == w and d[19, 13] == 6 and d[19, 5] != d[19, 5]  # ceiling, window, masked
    import tinfinite.attention as attention
    drawn = [line[4:].rstrip() for line in ascii_mask(8, 2, 4).splitlines()[1:]]
    doc = re.search(r"q\\k  0 1 2 3 4 5 6 7\n(.*?)\n\n", attention.__doc__, re.S).group(1)
    assert drawn == [line[9:].rstrip() for line in doc.splitlines()]


def test_pictures_script_writes_pngs(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "docs" / "pictures.py"), "--png", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "x x" in r.stdout
    for name in ("lambda_mask.png", "distance.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_the_worked_ring_is_what_the_cache_holds(tmp_path):
    """The guide's table of the ring as it wraps: the positions each slot holds after each call,
    and the last query's window in brackets, as LambdaCache really leaves them."""
    import torch
    from tests.tiny import make_tiny_model
    from tinfinite.cache import LambdaCache
    from tinfinite.checkpoint import load_model
    from tinfinite.attention import lambda_mask
    make_tiny_model(tmp_path)
    model = load_model(tmp_path)
    cache = LambdaCache(model.cfg, n_global=2, n_local=4, max_chunk=2)
    table = re.findall(r"^\| (\d) \| \d, \d \| (.*?) \| [^|]*\|$", GUIDE.read_text(), re.M)
    assert len(table) == 5
    for call, cells in table:
        model(torch.tensor([[5, 6]]), cache)
        last = cache.first + cache.n_seen - 1
        seen = lambda_mask(torch.tensor([last]), cache.pos, cache.n_local)[0]
        drawn = [("-" if p < 0 else f"[{p}]" if s else str(p)) for p, s in zip(cache.pos.tolist(), seen.tolist())]
        assert [c.strip() for c in cells.split("|")] == drawn, call
