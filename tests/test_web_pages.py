"""The web pages in a real browser: Debian's Chromium driven by Selenium against a real ``lora-studio serve``.

One click-through as a first-time user makes it (sign in, drop a zip, train on the tiny base,
"Use this LoRA", generate, "Tweak it" with another seed, see the fork's diff), then quick checks:
nothing private without a token, the cookie never opens the JSON API, validation errors next to
their field, user text escaped, no sideways scrolling at phone width.

Screenshots go to ``$LORA_STUDIO_SCREENSHOTS`` (or the test's tmp dir); with
``LORA_STUDIO_UPDATE_DOCS_SCREENSHOTS=1`` the two README ones in docs/screenshots/ are rewritten too.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import pytest
import requests
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium, needs_chromium
from conftest import zip_images
from lora_core.base import checkpoints
from lora_core.service.models import load_models
from lora_core.service.web import pages
from lora_core.tiny import tiny_world
from lora_core.training import trainer
from service_harness import ROOT, Api

GENERATE = "lora-studio/lora"
TRAIN = "lora-studio/lora-training"
OWNER = "webuser"
DOCS_SHOTS = {"training-succeeded": "training.png", "fork": "fork.png"}


# ---- what the pages compute (no browser) ----------------------------------------------------------------------


def test_the_form_comes_from_the_schema():
    models = load_models()
    train = {f.name: f for f in pages.form_fields(models[TRAIN].schema)}
    assert list(train)[:3] == ["instance_data", "task", "base_model"]  # x-order
    assert train["instance_data"].kind == "file" and train["instance_data"].required
    assert train["task"].kind == "enum" and train["task"].choices == ("face", "object", "style")
    assert train["task"].default == "face"
    assert train["train_text_encoder"].kind == "boolean" and train["train_text_encoder"].nullable
    assert train["max_train_steps"].expert and not train["seed"].expert
    assert train["max_train_steps"].bounds == "1 – 20000" and train["learning_rate"].bounds == "1e-06 – 0.1"
    generate = {f.name: f for f in pages.form_fields(models[GENERATE].schema)}
    assert generate["prompt"].kind == "textarea" and generate["lora_scales"].kind == "text"
    assert generate["scheduler"].choices[0] == "DPMSolverMultistep"
    # a registry name or a checkpoint URL: free text, offered the registry's names
    assert generate["base_model"].kind == "text" and generate["base_model"].suggestions == tuple(checkpoints.REGISTRY)
    assert generate["guidance_scale"].kind == "number" and generate["num_outputs"].kind == "integer"
    # a new input appears without touching a template
    schema = json.loads(json.dumps(models[GENERATE].schema))
    schema["components"]["schemas"]["Input"]["properties"]["strength"] = {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "default": 0.8,
        "title": "Strength",
        "x-order": 99,
    }
    assert pages.form_fields(schema)[-1].bounds == "0 – 1"


def test_prefill_takes_defaults_then_the_parent_then_the_query():
    fields = pages.form_fields(load_models()[GENERATE].schema)
    values = pages.prefill(fields, {"prompt": "a cat", "seed": 5, "guidance_scale": 3.0}, {"seed": "6", "nope": "x"})
    assert values["prompt"] == "a cat" and values["seed"] == "6" and values["guidance_scale"] == "3"
    assert values["num_outputs"] == "1" and values["width"] == "" and "nope" not in values


def test_progress_seed_and_prompt_come_from_the_logs():
    logs = (
        "task object: an object or a pet; seed 17\n 41%|████▏     | 104/250 [00:14<00:19,  7.43it/s, loss=0.0417]\n"
        "sample grid: 'a photo of <1>' at scales 0.0, 0.25, seed 17\n"
    )
    progress = pages.progress(logs)
    assert (progress.percent, progress.step, progress.total, progress.eta_s) == (41.0, 104, 250, 19)
    assert pages.resolved_seed(logs) == 17 and pages.lora_prompt(logs) == "a photo of <1>"
    assert pages.resolved_seed('settings: {"prompt":"x","seed":3533257224,"scheduler":"DDIM"}; scales') == 3533257224
    assert pages.progress("nothing yet") is None and pages.lora_prompt("") == "a photo of <1>"
    assert "(?<percent>" in pages.js_progress_pattern() and "(?P<" not in pages.js_progress_pattern()


def test_a_fork_diff_names_the_changes_and_the_seed_a_random_one_drew():
    parent = {"prompt": "a", "seed": None, "num_outputs": 4}
    diff = pages.input_diff(parent, {**parent, "seed": 8}, pages.drawn_seed({"logs": 'settings: {"seed":7}'}))
    assert diff == [pages.Change("seed", None, 8, "drew 7")]
    assert pages.input_diff(parent, dict(parent)) == []
    assert pages.drawn_seed({"provenance": {"seed": 9}, "logs": 'settings: {"seed":7}'}) == 9  # the record first


# ---- in the browser --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token(service) -> str:
    return service.token(OWNER)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("LORA_STUDIO_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> WebDriver:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


# ---- helpers ----------------------------------------------------------------------------------------------


def wait(driver: WebDriver, condition, timeout: float = 30, message: str = ""):
    return WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    ).until(condition, message)


def css(driver: WebDriver, selector: str):
    return driver.find_element(By.CSS_SELECTOR, selector)


def status_of(driver: WebDriver) -> str:
    return css(driver, "[data-status]").get_attribute("textContent").strip()


def wait_final(driver: WebDriver, timeout: float) -> str:
    """Until the prediction page shows a final status (the page reloads itself then)."""
    wait(
        driver,
        lambda d: css(d, "[data-prediction]").get_attribute("data-terminal") == "1",
        timeout,
        "the prediction did not finish",
    )
    return status_of(driver)


def shoot(driver: WebDriver, folder: Path, name: str, width: int = 1140) -> Path:
    """A full-page screenshot: the window grown to the page's height for the shot."""
    driver.set_window_size(width, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height, 600), 4000))
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path


def sign_in_cookie(driver: WebDriver, base: str, token: str) -> None:
    driver.get(base + "/static/app.css")  # any page of the origin, to set its cookie
    driver.add_cookie({"name": "lora_studio_token", "value": token, "path": "/", "sameSite": "Strict"})


def fill(element, value: str) -> None:
    element.clear()
    element.send_keys(value)


def update_docs(shots: Path) -> None:
    """The README's screenshots, cut to a screenful and reduced to 256 colours (tens of KB, not hundreds)."""
    from PIL import Image

    target = ROOT / "docs" / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    for name, filename in DOCS_SHOTS.items():
        image = Image.open(shots / f"{name}.png").convert("RGB")
        image = image.crop((0, 0, image.width, min(image.height, 1150)))
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(target / filename, optimize=True)


# ---- the click-through --------------------------------------------------------------------------------------


@needs_chromium
@pytest.mark.slow
def test_train_use_generate_tweak_in_the_browser(service, browser, token, shots, tmp_path):
    d, base = browser, service.url
    zip_path = zip_images(tmp_path / "purple-stars.zip", tiny_world.concept_images("star", "purple", 6, first_seed=0))
    d.delete_all_cookies()
    started = time.monotonic()
    marks: dict[str, float] = {}

    # a first-time visitor: the two models and a sign-in box, nothing private
    d.get(base + "/")
    cards = d.find_elements(By.CSS_SELECTOR, "[data-model]")
    assert {e.get_attribute("data-model") for e in cards} == {GENERATE, TRAIN}
    assert css(d, "#signin").is_displayed() and not d.find_elements(By.CSS_SELECTOR, "[data-prediction-row]")
    shoot(d, shots, "home-first-visit")
    fill(css(d, "#token-input"), "ls_not-a-token")
    css(d, "[data-signin] button").click()
    wait(d, lambda d: "does not know" in css(d, "[data-signin-error]").text)
    fill(css(d, "#token-input"), token)
    css(d, "[data-signin] button").click()
    wait(d, lambda d: css(d, ".who").text == OWNER)
    cookie = d.get_cookie("lora_studio_token")
    assert cookie["value"] == token and cookie["sameSite"] == "Strict" and cookie["httpOnly"]
    assert token not in d.execute_script("return document.cookie")  # no script on the origin can read it

    # train: drop the zip on the form's file input, pick the task, a short run
    css(d, f"[data-model='{TRAIN}']").click()
    wait(d, lambda d: d.current_url.endswith(f"/models/{TRAIN}"))
    css(d, "[data-dropzone='instance_data'] input[type=file]").send_keys(str(zip_path))
    wait(d, lambda d: "done" in css(d, "[data-dropzone='instance_data']").get_attribute("class"), 30, "upload")
    assert "/v1/files/" in css(d, "input[name='instance_data']").get_attribute("value")
    assert "purple-stars.zip" in css(d, "[data-upload-status]").text
    Select(css(d, "select[name='task']")).select_by_value("object")
    fill(css(d, "input[name='seed']"), "0")
    css(d, "details.expert summary").click()
    fill(css(d, "input[name='max_train_steps']"), "250")
    fill(css(d, "[data-destination]"), "web-stars")  # published under a name (Replicate's trainings API)
    shoot(d, shots, "train-form")
    css(d, "[data-submit]").click()
    wait(d, lambda d: re.search(r"/predictions/[a-z0-9]{26}$", d.current_url))
    training_id = d.current_url.rsplit("/", 1)[1]
    marks["training submitted"] = time.monotonic() - started

    # live: the progress bar follows the training's progress lines
    wait(
        d,
        lambda d: (
            css(d, "[data-progress-card]").is_displayed()
            and re.fullmatch(r"\d+/250", css(d, "[data-progress-step]").text)
        ),
        600,
        "no progress shown",
    )
    assert css(d, "[data-progress-eta]").text.startswith("ETA") or css(d, "[data-progress-percent]").text == "100%"
    shoot(d, shots, "training-running")
    assert wait_final(d, 600) == "succeeded", css(d, "[data-logs]").text[-2000:]
    marks["training succeeded"] = time.monotonic() - started
    assert css(d, "[data-progress-percent]").text == "100%"
    assert f"published as {OWNER}/web-stars:1" in css(d, "[data-logs]").get_attribute("textContent")
    lora_card = css(d, "[data-output-file='lora']")
    assert ".safetensors" in lora_card.text and "KB" in lora_card.text
    facts = dict(
        zip(
            [e.text for e in lora_card.find_elements(By.TAG_NAME, "dt")],
            [e.text for e in lora_card.find_elements(By.TAG_NAME, "dd")],
            strict=True,
        )
    )
    assert facts["base"] == "tiny" and facts["task"] == "object" and facts["tokens"] == "<s0> <s1>", facts
    grid = css(d, "[data-output-image]")
    assert wait(d, lambda d: d.execute_script("return arguments[0].naturalWidth", grid) > 64)
    assert requests.get(css(d, "[data-output-file='lora'] a").get_attribute("href"), timeout=30).status_code == 200
    # its checkpoints: a row each with its scores, the recommended one marked and used by "Use this LoRA"
    rows = d.find_elements(By.CSS_SELECTOR, "[data-checkpoint]")
    assert [int(r.get_attribute("data-checkpoint")) for r in rows] == list(trainer.checkpoint_steps(250, 4))
    recommended = d.find_elements(By.CSS_SELECTOR, "[data-checkpoint].recommended")
    assert len(recommended) == 1 and "(recommended)" in recommended[0].text
    assert all(re.search(r"\b0\.\d{3}\b", r.text) for r in rows)  # a fidelity figure in every row
    use = recommended[0].find_element(By.CSS_SELECTOR, "[data-use-checkpoint]").get_attribute("href")
    assert use == css(d, "[data-use-lora]").get_attribute("href")
    assert facts["steps"] == recommended[0].get_attribute("data-checkpoint") and "bleed" in facts
    shoot(d, shots, "training-succeeded")

    # use this LoRA: the generation form, with the LoRA and a prompt naming it <1>
    css(d, "[data-use-lora]").click()
    wait(d, lambda d: f"/models/{GENERATE}" in d.current_url)
    assert "/v1/files/" in css(d, "textarea[name='lora_urls']").get_attribute("value")
    assert "<1>" in css(d, "textarea[name='prompt']").get_attribute("value")
    fill(css(d, "input[name='num_outputs']"), "4")
    css(d, "[data-submit]").click()
    wait(d, lambda d: re.search(r"/predictions/[a-z0-9]{26}$", d.current_url) and training_id not in d.current_url)
    generation_id = d.current_url.rsplit("/", 1)[1]
    assert wait_final(d, 600) == "succeeded", css(d, "[data-logs]").text[-2000:]
    images = d.find_elements(By.CSS_SELECTOR, "[data-output-image]")
    assert len(images) == 4
    assert all(d.execute_script("return arguments[0].naturalWidth", i) == 64 for i in images)
    drawn = int(re.search(r'"seed":(\d+)', css(d, "[data-logs]").get_attribute("textContent"))[1])
    shoot(d, shots, "generation")
    marks["generation succeeded"] = time.monotonic() - started

    # tweak it: the same form pre-filled (with the seed the empty seed drew), submitted as a fork
    css(d, "[data-tweak]").click()
    wait(d, lambda d: css(d, "[data-model-form]").get_attribute("data-fork") == generation_id)
    assert css(d, "input[name='seed']").get_attribute("value") == str(drawn)
    assert "/v1/files/" in css(d, "textarea[name='lora_urls']").get_attribute("value")
    assert css(d, "input[name='num_outputs']").get_attribute("value") == "4"
    new_seed = (drawn + 1) % 2**32
    fill(css(d, "input[name='seed']"), str(new_seed))
    shoot(d, shots, "tweak-form")
    css(d, "[data-submit]").click()
    wait(d, lambda d: re.search(r"/predictions/[a-z0-9]{26}$", d.current_url) and generation_id not in d.current_url)
    assert wait_final(d, 600) == "succeeded"
    marks["fork succeeded"] = time.monotonic() - started
    assert css(d, "[data-forked-from] a").get_attribute("href").endswith(f"/predictions/{generation_id}")
    rows = [r.text for r in css(d, "[data-diff]").find_elements(By.TAG_NAME, "tr")]
    assert rows == [f"seed empty (drew {drawn}) → {new_seed}"], rows
    assert len(d.find_elements(By.CSS_SELECTOR, "[data-output-image]")) == 4
    shoot(d, shots, "fork")

    # history: all three, newest first, filterable by model
    d.get(base + "/predictions")
    ids = [e.get_attribute("data-prediction-row") for e in d.find_elements(By.CSS_SELECTOR, "[data-prediction-row]")]
    fork_id = ids[0]
    assert ids[1:3] == [generation_id, training_id], ids
    assert css(d, f"[data-prediction-row='{fork_id}'] img").get_attribute("src")
    shoot(d, shots, "history")
    d.get(base + f"/predictions?model={TRAIN}")
    assert [
        e.get_attribute("data-prediction-row") for e in d.find_elements(By.CSS_SELECTOR, "[data-prediction-row]")
    ] == [training_id]

    # a second version of the name, a short training through the API
    api = Api(base, token)
    upload = api("POST", "/v1/files", files={"content": (zip_path.name, zip_path.read_bytes(), "application/zip")})
    zip_url = upload.json()["urls"]["get"]
    second = api(
        "POST",
        "/v1/trainings",
        json={
            "destination": f"{OWNER}/web-stars",
            "input": {"instance_data": zip_url, "task": "object", "max_train_steps": 10, "checkpoints": 1},
        },
    )
    assert second.status_code == 201, second.text
    assert api.wait(second.json()["id"])["status"] == "succeeded"

    # the catalog: the name with its sample grid and its older version; deleting the older one keeps the name,
    # deleting its last version empties it
    d.get(base + "/loras")
    row = css(d, f"[data-lora='{OWNER}/web-stars']")
    sample = row.find_element(By.CSS_SELECTOR, "[data-lora-sample]")
    assert wait(d, lambda d: d.execute_script("return arguments[0].naturalWidth", sample) > 64)
    row.find_element(By.CSS_SELECTOR, "[data-older-versions] summary").click()
    shoot(d, shots, "loras")
    older = row.find_element(By.CSS_SELECTOR, f"[data-version='{OWNER}/web-stars:1']")
    assert requests.get(older.find_element(By.CSS_SELECTOR, "a[download]").get_attribute("href"), timeout=30).ok
    older.find_element(By.CSS_SELECTOR, f"[data-delete-version='{OWNER}/web-stars:1']").click()
    WebDriverWait(d, 10).until(expected_conditions.alert_is_present()).accept()  # "Delete webuser/web-stars:1? …"
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-older-versions]"), 30, "the older one stayed")
    assert api("GET", f"/v1/loras/{OWNER}/web-stars").json()["versions"][0]["version"] == 2
    row = css(d, f"[data-lora='{OWNER}/web-stars']")
    row.find_element(By.CSS_SELECTOR, f"[data-delete-version='{OWNER}/web-stars:2']").click()
    WebDriverWait(d, 10).until(expected_conditions.alert_is_present()).accept()
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-lora]"), 30, "the version was not deleted")
    assert "No named LoRAs yet" in css(d, "main").text
    marks["total"] = time.monotonic() - started
    (shots / "click-through-seconds.json").write_text(json.dumps({k: round(v, 1) for k, v in marks.items()}, indent=1))
    print(f"\nclick-through: {json.dumps({k: round(v, 1) for k, v in marks.items()})}; screenshots in {shots}")
    if os.environ.get("LORA_STUDIO_UPDATE_DOCS_SCREENSHOTS") == "1":
        update_docs(shots)


# ---- quick checks -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_prediction(service, token) -> dict:
    """One finished generation of the test's owner, with user text that must never become markup."""
    body = Api(service.url, token).predict(
        GENERATE,
        {
            "prompt": "a red <b>circle</b> <img src=x onerror=alert(1)>",
            "seed": 1,
            "num_outputs": 2,
            "num_inference_steps": 4,
        },
    )
    assert body["status"] == "succeeded", body
    return body


@needs_chromium
def test_without_a_token_nothing_private_shows(service, browser, token, a_prediction):
    d, base, pid = browser, service.url, a_prediction["id"]
    for path in ("/", "/predictions", f"/predictions/{pid}", f"/models/{GENERATE}?fork={pid}", "/tokens"):
        r = requests.get(base + path, timeout=30)
        assert pid not in r.text and "circle" not in r.text and OWNER not in r.text, path
        assert 'id="signin"' in r.text, path
    assert requests.get(base + f"/predictions/{pid}", timeout=30).status_code == 401
    # another owner's token sees a 404, not the prediction
    other = requests.get(
        base + f"/predictions/{pid}", cookies={"lora_studio_token": service.token("someone-else")}, timeout=30
    )
    assert other.status_code == 404 and "circle" not in other.text
    # the cookie alone does not open the JSON API (where state changes): it needs the pages' own header too, which
    # no other site's page can send (no CORS here), so no CSRF; nor can another site sign a browser in
    assert requests.get(base + "/v1/predictions", cookies={"lora_studio_token": token}, timeout=30).status_code == 401
    assert (
        requests.post(
            base + f"/v1/models/{GENERATE}/predictions",
            json={"input": {"prompt": "x"}},
            cookies={"lora_studio_token": token},
            timeout=30,
        ).status_code
        == 401
    )
    assert requests.post(base + "/session", json={"token": token}, timeout=30).status_code == 403
    d.delete_all_cookies()
    d.get(base + f"/predictions/{pid}")
    assert css(d, "#signin").is_displayed() and not d.find_elements(By.CSS_SELECTOR, "[data-prediction]")
    sign_in_cookie(d, base, "ls_revoked-or-wrong")
    d.get(base + "/")
    assert "no longer valid" in css(d, ".notice.warn").text and not d.find_elements(By.CSS_SELECTOR, ".who")


@needs_chromium
def test_the_tokens_page_makes_a_token_shown_once_and_revokes_it(service, browser, token, shots):
    d, base = browser, service.url
    sign_in_cookie(d, base, token)
    d.get(base + "/tokens")
    assert len(d.find_elements(By.CSS_SELECTOR, "[data-this-browser]")) == 1  # the token this browser signed in with
    before = len(d.find_elements(By.CSS_SELECTOR, "[data-token]"))
    css(d, "[data-new-token]").click()
    made = wait(d, lambda d: css(d, "[data-token-shown]").text.strip())
    assert made.startswith("ls_") and css(d, "[data-token-made]").is_displayed()
    shoot(d, shots, "tokens")
    as_new = {"Authorization": f"Bearer {made}"}
    assert requests.get(base + "/v1/predictions", headers=as_new, timeout=30).status_code == 200  # it works
    d.get(base + "/tokens")  # listed, by its first characters only: shown once
    rows = d.find_elements(By.CSS_SELECTOR, "[data-token]")
    assert len(rows) == before + 1 and made not in d.page_source
    (row,) = [r for r in rows if r.find_element(By.CSS_SELECTOR, "code").text == made[:7] + "…"]
    revoked_id = row.get_attribute("data-token")
    row.find_element(By.CSS_SELECTOR, "[data-revoke-token]").click()
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, f"[data-token='{revoked_id}']"))
    assert requests.get(base + "/v1/predictions", headers=as_new, timeout=30).status_code == 401  # at once
    mine = {"Authorization": f"Bearer {token}"}
    assert requests.get(base + "/v1/predictions", headers=mine, timeout=30).status_code == 200  # the rest stay
    d.get(base + "/tokens")
    assert len(d.find_elements(By.CSS_SELECTOR, "[data-token]")) == before and css(d, ".who").text == OWNER


@needs_chromium
def test_user_text_is_shown_as_text(service, browser, token, a_prediction):
    d = browser
    sign_in_cookie(d, service.url, token)
    d.get(service.url + f"/predictions/{a_prediction['id']}")
    assert "<b>circle</b> <img src=x" in css(d, "[data-input]").text
    assert not d.find_elements(By.CSS_SELECTOR, "[data-input] b, [data-input] img")
    d.get(service.url + "/predictions")
    assert "<b>circle</b>" in css(d, f"[data-prediction-row='{a_prediction['id']}']").text


@needs_chromium
def test_validation_errors_show_next_to_their_field(service, browser, token, shots):
    d = browser
    sign_in_cookie(d, service.url, token)
    d.get(service.url + f"/models/{GENERATE}")
    fill(css(d, "textarea[name='prompt']"), "")
    fill(css(d, "input[name='num_outputs']"), "9")
    css(d, "[data-submit]").click()
    wait(d, lambda d: css(d, "[data-error-for='num_outputs']").text)
    assert "less than or equal to 4" in css(d, "[data-error-for='num_outputs']").text
    assert "prompt is required" in css(d, "[data-error-for='prompt']").text
    assert "invalid" in css(d, "[data-field='num_outputs']").get_attribute("class")
    assert css(d, "[data-error-for='seed']").text == ""
    assert d.current_url.endswith(f"/models/{GENERATE}")
    shoot(d, shots, "validation-errors")
    # fixed, it goes through
    fill(css(d, "textarea[name='prompt']"), "a blue square")
    fill(css(d, "input[name='num_outputs']"), "1")
    css(d, "[data-submit]").click()
    wait(d, lambda d: "/predictions/" in d.current_url)
    assert wait_final(d, 120) == "succeeded"


@needs_chromium
def test_phone_width_has_no_sideways_scrolling(service, browser, token, a_prediction, shots):
    d = browser
    sign_in_cookie(d, service.url, token)
    pages = {
        "home": "/",
        "train-form": f"/models/{TRAIN}",
        "generate-form": f"/models/{GENERATE}",
        "prediction": f"/predictions/{a_prediction['id']}",
        "history": "/predictions",
        "tweak-form": f"/models/{GENERATE}?fork={a_prediction['id']}",
        "tokens": "/tokens",
    }
    try:
        for name, path in pages.items():
            d.set_window_size(390, 844)
            d.get(service.url + path)
            inner = d.execute_script("return window.innerWidth")
            wide = d.execute_script("return document.documentElement.scrollWidth")
            assert inner <= 400 and wide <= inner, f"{path}: {wide} px of content in a {inner} px window"
            shoot(d, shots, f"phone-{name}", width=390)
    finally:
        d.set_window_size(1280, 900)


@needs_chromium
def test_the_form_draws_on_the_tiny_sdxl_base(service, browser, token):
    """``base_model`` in a link (what "Use this LoRA" writes for an SDXL LoRA) picks the tiny SDXL base in the
    form (a text field offering the registry's names), and the prediction runs on it: a 64-pixel picture of what
    the prompt asks."""
    from PIL import Image

    from lora_core.tiny import tiny_eval

    d = browser
    sign_in_cookie(d, service.url, token)
    d.get(service.url + f"/models/{GENERATE}?base_model=tiny-xl&prompt=a+red+square")
    field = css(d, "input[name='base_model']")
    assert field.get_attribute("value") == "tiny-xl"
    offered = [
        o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, f"#{field.get_attribute('list')} option")
    ]
    assert offered == list(checkpoints.REGISTRY)
    fill(css(d, "input[name='seed']"), "2")
    css(d, "[data-submit]").click()
    wait(d, lambda d: "/predictions/" in d.current_url)
    assert wait_final(d, 120) == "succeeded", css(d, "[data-logs]").text[-2000:]
    prediction = Api(service.url, token)("GET", f"/v1/predictions/{d.current_url.rsplit('/', 1)[1]}").json()
    assert prediction["input"]["base_model"] == "tiny-xl"
    picture = css(d, "[data-output-image]").get_attribute("src")
    image = Image.open(io.BytesIO(requests.get(picture, timeout=30).content)).convert("RGB")
    assert image.size == (64, 64) and tiny_eval.dominant_colour(image) == "red"
