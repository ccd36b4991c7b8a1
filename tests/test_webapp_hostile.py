"""The web app tried as an attacker on the hospital network would (issue 26).

The REAL app runs as `histopath serve` starts it (a subprocess on loopback), with the
embedded MIL backend; every loop and wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time

import pytest
import requests
from serving_fixtures import TEST_PASSWORD, csrf_token, web_app

GUESSES = 20
RIGHT_GUESS = 9  # the 10th guess carries the right password
LOCKOUT_FAILURES = 5  # the app's default HISTOPATH_LOCKOUT_FAILURES


@pytest.fixture(scope="module")
def web(exported_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("webapp-hostile")
    with web_app(work, serving_dir=exported_models.base, users=(("race-victim", "pathologist"),)) as running:
        yield running


def _events(database, username: str) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT kind, COUNT(*) FROM predictions_auditevent WHERE username = ? "
                                  "GROUP BY kind", (username,)).fetchall()
    return dict(rows)


def test_parallel_guesses_cannot_beat_the_lock_out(web):
    """20 simultaneous sign-ins for one user, the right password 10th: no more than the
    allowed number of passwords is ever checked, and the right one does not get in."""
    login_url = web["url"] + "/accounts/login/"
    sessions = []
    for _ in range(GUESSES):
        session = requests.Session()
        sessions.append((session, csrf_token(session.get(login_url, timeout=30).text)))
    barrier = threading.Barrier(GUESSES)

    def guess(index: int) -> int:
        session, token = sessions[index]
        password = TEST_PASSWORD if index == RIGHT_GUESS else f"wrong-password-{index}"
        barrier.wait(timeout=60)
        time.sleep(index * 0.02)  # in order, all in flight together
        response = session.post(login_url, allow_redirects=False, timeout=180, data={
            "csrfmiddlewaretoken": token, "username": "race-victim", "password": password})
        return response.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=GUESSES) as pool:
        statuses = list(pool.map(guess, range(GUESSES)))
    events = _events(web["database"], "race-victim")
    assert statuses[RIGHT_GUESS] == 200, "the right password signed in after the account was locked"
    assert events.get("sign_in", 0) == 0
    assert events.get("sign_in_failed", 0) == LOCKOUT_FAILURES, events  # passwords checked
    assert 302 not in statuses
    session = requests.Session()
    token = csrf_token(session.get(login_url, timeout=30).text)
    after = session.post(login_url, allow_redirects=False, timeout=60, data={
        "csrfmiddlewaretoken": token, "username": "race-victim", "password": TEST_PASSWORD})
    assert after.status_code == 200 and "This account is locked" in after.text
