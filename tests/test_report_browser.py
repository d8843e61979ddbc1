"""The report in a real browser: headless Chromium loads it without console errors, every figure renders with
a non-zero size, user input stays text, and a screenshot is kept in test-artifacts/report.png."""

import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
EVIL = "<script>alert(1)</script>"


def _binary(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _binary("chromium"), _binary("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("chromium / chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(chromedriver), options=options)
    drv.set_page_load_timeout(120)
    yield drv
    drv.quit()


def probed_run(name, activation, init, **init_kwargs):
    """A small network trained 40 updates with the real Probe; its records as a RunData."""
    from deepscope.models import mlp
    from deepscope.plots.html import RunData
    from deepscope.probe import Probe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = mlp(16, 4, 3, 32, activation, init=init, init_kwargs=init_kwargs)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(500, 16, generator=g)
        y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scalars = []
        with Probe(model, every=10, monitor=(x[-100:], y[-100:]), jacobian_examples=4) as probe:
            for t in range(40):
                xb, yb = x[10 * t: 10 * t + 10], y[10 * t: 10 * t + 10]
                logits = model(xb)
                loss = torch.nn.functional.cross_entropy(logits, yb)
                loss.backward()
                opt.step()
                opt.zero_grad()
                probe.step()
                if (t + 1) % 10 == 0:
                    error = (logits.argmax(1) != yb).float().mean()
                    scalars += [dict(step=t + 1, name="train/loss", value=loss.item()),
                                dict(step=t + 1, name="train/error", value=error.item())]
    finally:
        torch.set_num_threads(threads)
    spec = {"name": name, "model": {"activation": activation, "depth": 3, "width": 32}, "init": {"scheme": init}}
    return RunData(name, run_id=f"run-{activation}", spec=spec, status="finished", stats=probe.records,
                   histograms=probe.histograms, scalars=scalars)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    from deepscope.plots.html import RunData
    from deepscope.workflows.report import report

    runs = [probed_run("tanh, normalized init", "tanh", "glorot_uniform"),
            probed_run(EVIL, "sigmoid", "normal", std=2.0),
            RunData("no records")]
    return report(runs, out_path=tmp_path_factory.mktemp("report") / "report.html")


def test_report_renders_in_chromium(driver, report_file):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver.get(report_file.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []

    figures = driver.find_elements(By.CSS_SELECTOR, "img, svg")
    assert len(figures) >= 2 + 2 * 7  # the comparison figures and every family for the two probed runs
    for fig in figures:
        size = fig.size
        assert size["width"] > 0 and size["height"] > 0, fig.get_attribute("alt")
        if fig.tag_name == "img":
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", fig) > 0

    # the run named like a script is shown as text and never runs
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    assert EVIL in driver.find_element(By.ID, "summary").text
    assert "saturation" in driver.find_element(By.ID, "findings").text

    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height, 12000))
    assert driver.save_screenshot(str(ARTIFACTS / "report.png"))
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
