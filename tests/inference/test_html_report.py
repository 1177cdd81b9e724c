"""``predict --output-type html``: report.html per study and index.html over the run hold the
results, load nothing from outside the page, and render in a real headless browser (Chromium)
without errors, with the key parts laid out one below the other within the page's width. The
browser test skips when no Chromium is installed (``apt-get install chromium``)."""
import base64
import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from tests.inference.test_output_values import ct_volume, run_predict, write_nifti

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
SECTIONS = ("patient", "burden", "lesions3d", "curve", "key-slices", "model-card")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    study = root / "chest.nii.gz"
    write_nifti(study, ct_volume())
    out = root / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        status, lines = run_predict(monkeypatch, [study, root / "missing.nii.gz"], out,
                                    "--output-type", "html")
    assert status == 2, lines  # the missing input is the run's one failed study
    return out


def test_pages_hold_the_results_and_nothing_from_outside(pages):
    # catches: a result left out of the page or shown for another class, a resource the page
    # fetches (a network or file URL: the page would break on a USB stick), text not escaped,
    # the failed study missing from index.html, a link to a page that does not exist
    report = json.loads((pages / "chest" / "report.json").read_text())
    page = (pages / "chest" / "report.html").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert "Not for clinical use" in page
    assert f"Result: <b>{report['patient']['class']}</b>" in page
    for cls, score in report["patient"]["scores"].items():
        assert re.search(rf"<td class=\"l\">{re.escape(cls)}</td><td>{score:.3f}</td>", page)
    for cls, ml in report["burden"]["ml"].items():
        assert f"<td class=\"l\">{cls}</td><td>{ml:.2f}</td>" in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for uri in sources:  # each embedded picture decodes to a whole slice overlay
        data = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
        picture = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert picture is not None and picture.std() > 10
        assert picture.shape[0] == picture.shape[1] and picture.shape[0] % 48 == 0  # upscaled
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    assert page.count("<polyline") == len(report["model"]["image_classes"])
    index = (pages / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'href="([^"]*)"', index)
    assert links == ["chest/report.html"] and all((pages / link).is_file() for link in links)
    assert "missing.nii.gz" not in index and "input 2" in index and "error" in index


def _browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


PROBE = """<pre id="probe"></pre><script>
window.addEventListener('load', function () {
  var out = {errors: window.__errors, sections: {}, images: [],
             width: document.documentElement.scrollWidth, viewport: window.innerWidth};
  %s.forEach(function (id) {
    var r = document.getElementById(id).getBoundingClientRect();
    out.sections[id] = [r.left, r.top, r.width, r.height];
  });
  Array.prototype.forEach.call(document.images, function (img) {
    out.images.push([img.complete, img.naturalWidth]);
  });
  var svg = document.getElementById('curve-svg').getBoundingClientRect();
  out.svg = [svg.width, svg.height];
  document.getElementById('probe').textContent = JSON.stringify(out);
});
</script>"""
CATCH = ("<script>window.__errors=[];window.addEventListener('error',function(e){"
         "window.__errors.push(String(e.message||e.target.src||e.type))},true);</script>")


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(pages, tmp_path):
    # catches: markup the browser cannot lay out (sections collapsed or out of order), an image
    # the browser cannot decode, a script or resource error, a page wider than the window
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium / Chrome installed (apt-get install chromium)")
    page = (pages / "chest" / "report.html").read_text(encoding="utf-8")
    probed = page.replace("<style>", CATCH + "<style>", 1).replace(
        "</body>", PROBE % json.dumps(list(SECTIONS)) + "</body>")
    probe = tmp_path / "probe.html"
    probe.write_text(probed, encoding="utf-8")
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
             "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found and found.group(1), dom.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["errors"] == []
    assert result["images"] and all(ok and width > 0 for ok, width in result["images"])
    assert result["width"] <= result["viewport"]  # no horizontal scrolling
    boxes = [result["sections"][s] for s in SECTIONS]
    assert all(w > 100 and h > 20 for _, _, w, h in boxes)
    tops = [top for _, top, _, _ in boxes]
    assert tops == sorted(tops)  # one below the other, in this order
    assert result["svg"][0] > 400 and result["svg"][1] > 150
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", (pages / "chest" / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    picture = cv2.imread(str(shot))
    assert picture.shape[:2] == (900, 1200) and float(np.std(picture)) > 10


def test_a_score_that_is_not_a_number_is_an_empty_cell():
    # catches: a NaN class score (null in report.json) stopping the whole run with a TypeError
    # in studies.csv's row or in the page
    from oneshot_d2.inference.html_report import study_html
    from oneshot_d2.inference.outputs import study_summary_row

    report = {
        "study": "s", "source": "input 1", "kind": "nifti", "version": "x", "created": "now",
        "geometry": {"slices": 1},
        "model": {"meta_architecture": "M", "image_head": "H", "image_classes": ["A", "B"]},
        "patient": {"class": "A", "rule": "top_k_mean", "top_k": 1, "thresh": 0.5,
                    "negative_class": "B", "scores": {"A": None, "B": 0.5}},
        "burden": None, "lesions_3d": None}
    row = study_summary_row("s", "input 1", report)
    assert row["score_A"] == "" and row["score_B"] == 0.5
    page = study_html(report, [0.0], "slice index", np.array([[np.nan, 0.5]]), {})
    assert "<td class=\"l\">A</td><td></td><td></td>" in page
