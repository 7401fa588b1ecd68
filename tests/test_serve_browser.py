"""The page of `gpq serve` in a real browser: Debian's chromium and chromedriver (`make browser`
installs them), driven headless by Selenium."""

import signal

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_serve import K, make_files, start_server, stop_server

pytestmark = pytest.mark.large  # a server and a browser: in `make test`

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, the folder of make_files) of `gpq serve`, stopped cleanly at the end."""
    files = make_files(tmp_path_factory.mktemp("browser"))
    log = files / "serve.log"
    proc, url = start_server(files / "model.keras", files / "index.npz", log)
    yield url, files
    assert stop_server(proc, log, signal.SIGTERM) == 0


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _hits(browser):
    """[(rank, id, source, caption)] of the grid's figures."""
    return [
        (
            int(f.get_attribute("data-rank")),
            int(f.get_attribute("data-id")),
            f.get_attribute("data-source"),
            f.text,
        )
        for f in browser.find_elements(By.CSS_SELECTOR, "#results figure.hit")
    ]


def _wait_for_results(browser, query):
    """The grid's hits once it shows the results of `query` (the answer's "query")."""
    grid = browser.find_element(By.ID, "results")
    WebDriverWait(browser, 60).until(lambda b: grid.get_attribute("data-query") == query)
    return _hits(browser)


def test_a_picked_photo_shows_its_top_k_and_a_click_searches_by_a_result(server, browser):
    url, files = server
    query = files / "photos" / "green" / "photos_2.jpg"
    with httpx.Client(timeout=60) as client:  # what the API answers (== gpq search, test_serve)
        want = client.post(f"{url}/search", params={"k": K}, content=query.read_bytes()).json()
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda b: "12 items" in b.find_element(By.ID, "items").text)
    browser.find_element(By.ID, "file").send_keys(str(query))
    hits = _wait_for_results(browser, query.name)
    assert len(hits) == K and hits[0][2] == want["results"][0]["source"]  # the expected first
    assert [(rank, i, source) for rank, i, source, _ in hits] == [
        (h["rank"], h["id"], h["source"]) for h in want["results"]
    ]
    for (_, _, source, caption), h in zip(hits, want["results"]):
        assert f"{h['distance']:.4f}" in caption and source.rsplit("/", 1)[-1] in caption
    WebDriverWait(browser, 30).until(  # every thumbnail loaded from /items/ID/image
        lambda b: b.execute_script(
            "return [...document.querySelectorAll('#results img')]"
            ".every((i) => i.complete && i.naturalWidth > 0)"
        )
    )
    assert "top 5 for photos_2.jpg" in browser.find_element(By.ID, "status").text

    clicked = want["results"][1]
    with httpx.Client(timeout=60) as client:
        similar = client.get(f"{url}/items/{clicked['id']}/similar", params={"k": K}).json()
    browser.find_elements(By.CSS_SELECTOR, "#results figure.hit")[1].click()
    hits = _wait_for_results(browser, clicked["source"])  # the item's file is the query
    assert [(i, source) for _, i, source, _ in hits] == [
        (h["id"], h["source"]) for h in similar["results"]
    ]


def test_a_file_that_is_not_an_image_shows_the_error(server, browser, tmp_path):
    url, _ = server
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    browser.get(url + "/")
    browser.find_element(By.ID, "file").send_keys(str(text))
    WebDriverWait(browser, 60).until(
        lambda b: "not a decodable image" in b.find_element(By.ID, "status").text
    )
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"
