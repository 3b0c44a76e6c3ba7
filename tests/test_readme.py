"""README's Python API example runs as written and produces text."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "The capital of France is Paris."
    assert float(lines[1].split()[0]) > 0
    assert 1 < float(lines[2]) < 1000


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text()


def test_readme_is_the_front_door():
    """Short; the measurements live in docs/results.md; every path works in a fresh clone."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "(docs/results.md)" in text and (README.parent / "docs" / "results.md").is_file()
    for doc in (README, README.parent / "docs" / "results.md"):
        assert "../shared" not in doc.read_text()


def test_readme_server_example_runs(capsys):
    """The openai snippet and the curl line of README's Server section, against a real server
    on the default model."""
    import shutil
    import socket
    import subprocess
    import threading
    import time

    import uvicorn

    from tinfinite import Engine, ensure_default_model
    from tinfinite.fetch import MODEL_NAME
    from tinfinite.server import make_app

    section = README.read_text().split("## Server\n")[1].split("\n## ")[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    curl = next(line.strip() for line in section.splitlines() if line.strip().startswith("curl"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = str(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(make_app(Engine.load(ensure_default_model()),
                                                    MODEL_NAME), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        exec(compile(snippet.replace(":8000/", f":{port}/"), "README.md", "exec"), {})
        assert "Paris" in capsys.readouterr().out
        if shutil.which("curl"):
            sse = subprocess.run(curl.replace(":8000/", f":{port}/"), shell=True, timeout=120,
                                 capture_output=True, text=True).stdout
            assert sse.startswith("data: {") and sse.rstrip().endswith("data: [DONE]")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
