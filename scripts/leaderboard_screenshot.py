"""Take docs/leaderboard.png: a local leaderboard server (the three real 2D datasets of
FMEVAL_DATA_ROOT), three teams' submissions made through the API, the board in headless Chromium.

    FMEVAL_DATA_ROOT=../shared/data .venv/bin/python scripts/leaderboard_screenshot.py docs/leaderboard.png

Needs the server-test extra and Debian's chromium + chromium-driver. The submissions are synthetic
probabilities that lean to the true label by different amounts (the board shows what the pages look
like, not a model's result).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from fmeval.server.client import pack, upload

DATASETS = ("pneumoniamnist", "breastmnist", "retinamnist")


def scores(root: Path, flag: str, quality: float, seed: int) -> np.ndarray:
    with np.load(root / f"{flag}.npz") as z:
        y = z["test_labels"][:, 0].astype(int)
    k = int(y.max()) + 1
    logits = np.random.default_rng(seed).normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += quality
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main(out: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root = Path(os.environ["FMEVAL_DATA_ROOT"])
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "fmeval", "serve", "--port", str(port), "--db",
                                 f"sqlite:///{tmp}/lb.sqlite3", "--datasets", ",".join(DATASETS), "--sizes", "28"],
                                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/api/leaderboard").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            for i, (team, models) in enumerate({"Radiology Lab": [("ViT-B/16 linear probe", 1.6, "https://example.org/study"),
                                                                   ("ViT-B/16 kNN", 1.2, "")],
                                                "Course Team 7": [("ResNet-18 fine-tuned", 1.4, "")],
                                                "Pathology AI": [("DINOv2 few-shot", 0.9, "")]}.items()):
                c = httpx.Client(base_url=url)
                pre = re.search(r'name="csrf" value="([^"]+)"', c.get("/register").text).group(1)
                c.post("/register", data={"team": team, "email": f"t{i}@example.org", "password": "password123",
                                          "csrf": pre})
                me = c.get("/me").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', me).group(1)
                token = re.search(r'id="token">([^<]+)<', c.post("/tokens", data={"csrf": csrf}).text).group(1)
                for j, (model, q, study) in enumerate(models):
                    folder = Path(tmp) / f"{i}-{j}"
                    folder.mkdir()
                    for flag in DATASETS:
                        p = scores(root, flag, q, 10 * i + j)
                        rows = ["index," + ",".join(map(str, range(p.shape[1])))]
                        rows += [f"{n}," + ",".join(map(repr, r)) for n, r in enumerate(p.tolist())]
                        (folder / f"{flag}.csv").write_text("\n".join(rows) + "\n")
                    upload(url, token, pack({f: folder / f"{f}.csv" for f in DATASETS}),
                           {"size": "28", "model_name": model, "description": "", "study_url": study})
            opts = webdriver.ChromeOptions()
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,720"):
                opts.add_argument(arg)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
            try:
                driver.get(url + "/?size=28&metric=auc")
                driver.save_screenshot(out)
            finally:
                driver.quit()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/leaderboard.png")
