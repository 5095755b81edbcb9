"""A small Python client of the labeling app, for `chatrlhf iterate` and scripts.

    c = LabelingClient("http://127.0.0.1:8100", admin_token)
    c.push_comparisons("round-2", records)                  # comparison records from `chatrlhf sample`
    c.attach_simulated("round-2", world.labelers(held_out=False), world)   # or wait for people
    ranked = c.pull_rankings("round-2")                     # same records, `rankings` filled

    c.set_policy(model_dir="runs/default/ppo", round=2)     # the model trainers chat with
    c.simulate_chats("talk", trainers, world, prompts)      # chat -> finish -> a ranking task per chat
    c.attach_simulated("talk-rank", trainers, world)        # rank the chats' turns

Simulated labelers use the same HTTP queue as people (one bearer token each), so the app cannot
tell them apart and everything downstream (export, agreement) is the same code path.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Iterable

import httpx

CHUNK = 500  # records per import request, well under the app's body limit


class LabelingError(RuntimeError):
    """The app answered with an error; the message carries its status and detail."""


class LabelingClient:
    def __init__(self, url: str, admin_token: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.admin = self._http(admin_token, timeout)
        self.timeout = timeout

    def _http(self, token: str, timeout: float | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            timeout=timeout or self.timeout, trust_env=False)

    @staticmethod
    def _check(r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            raise LabelingError(f"{r.request.method} {r.request.url.path}: {r.status_code} {detail}")
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    # --- admin ---------------------------------------------------------------------------------

    def create_project(self, project: str, kind: str = "rank", labelers_per_item: int = 1,
                       instructions: str = "") -> dict:
        return self._check(self.admin.post("/api/admin/projects", json={
            "name": project, "kind": kind, "labelers_per_item": labelers_per_item, "instructions": instructions}))

    def push_comparisons(self, project: str, records: list[dict], labelers_per_item: int = 1,
                         instructions: str = "Rank the responses from best to worst.") -> dict[str, int]:
        """Create the rank project if needed and import comparison records (idempotent by id)."""
        self.create_project(project, "rank", labelers_per_item, instructions)
        return self.push_items(project, records)

    def push_items(self, project: str, records: list[dict]) -> dict[str, int]:
        total = {"added": 0, "unchanged": 0}
        for i in range(0, len(records), CHUNK):
            got = self._check(self.admin.post(f"/api/admin/projects/{project}/items",
                                              json={"records": records[i:i + CHUNK]}))
            for k in total:
                total[k] += got[k]
        return total

    def add_labeler(self, name: str, password: str | None = None, group: str | None = None) -> str:
        """Create a labeler (or give an existing one a new API token); returns the token."""
        r = self.admin.post("/api/admin/users", json={"name": name, "role": "labeler", "password": password,
                                                      "group": group})
        if r.status_code == 409:
            roles = {u["name"]: u["role"] for u in self._check(self.admin.get("/api/admin/users"))["users"]}
            if roles.get(name) != "labeler":  # never hand an admin's powers to a simulated labeler
                raise LabelingError(f"user '{name}' exists and is an {roles.get(name)}, not a labeler")
            r = self.admin.post(f"/api/admin/users/{name}/token")
        return self._check(r)["token"]

    def assign(self, project: str, labelers: list[str]) -> int:
        return self._check(self.admin.post(f"/api/admin/projects/{project}/members", json={"labelers": labelers}))["added"]

    def export(self, project: str, include_unlabeled: bool = False, round: int | None = None,
               group: str | None = None) -> list[dict]:
        import json

        params = {"all": str(include_unlabeled).lower(), **({"round": round} if round is not None else {}),
                  **({"group": group} if group is not None else {})}
        text = self._check(self.admin.get(f"/api/admin/projects/{project}/export", params=params))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def pull_rankings(self, project: str, group: str | None = None) -> list[dict]:
        """Comparison records that have at least one ranking (by a labeler of `group`, when given),
        in the `chatrlhf rm` format."""
        return self.export(project, group=group)

    def stats(self, project: str) -> dict:
        return self._check(self.admin.get(f"/api/admin/projects/{project}"))

    def agreement(self, project: str) -> dict:
        return self._check(self.admin.get(f"/api/admin/projects/{project}/agreement"))

    def wait_complete(self, project: str, timeout_s: float = 3600, poll_s: float = 5.0) -> dict:
        """Block until every item has its answers (people labeling in the browser); polls at 0.2 s
        at first, backing off to `poll_s`."""
        deadline, wait = time.monotonic() + timeout_s, 0.2
        while True:
            st = self.stats(project)
            if st["complete_items"] >= st["items"] or time.monotonic() > deadline:
                return st
            time.sleep(wait)
            wait = min(poll_s, wait * 1.5)

    def projects(self) -> list[dict]:
        return self._check(self.admin.get("/api/admin/projects"))["projects"]

    def watch_simulated(self, pattern: str, labelers: Iterable[Any], world: Any = None, seed: int = 0,
                        poll_s: float = 2.0, stop: threading.Event | None = None) -> None:
        """Keep simulated labelers working on every rank/likert project whose name matches the glob
        `pattern` (e.g. "chatrlhf-round-*" for `chatrlhf iterate`), until `stop` is set."""
        import fnmatch

        labelers, stop = list(labelers), stop or threading.Event()
        while not stop.is_set():
            for p in self.projects():
                open_items = p["items"] * p["labelers_per_item"] - p["answers"]
                if fnmatch.fnmatch(p["project"], pattern) and p["kind"] in ("rank", "likert") and open_items > 0:
                    self.attach_simulated(p["project"], labelers, world, seed)
            stop.wait(poll_s)

    # --- the chat loop ---------------------------------------------------------------------------

    def set_policy(self, model_dir: str | None = None, url: str | None = None, model: str | None = None,
                   round: int | None = None, check: bool = True) -> dict:
        """Serve a model to the trainers: a model directory the app loads, or an OpenAI-compatible URL."""
        body = {"model_dir": model_dir, "url": url, "model": model, "round": round, "check": check}
        return self._check(self.admin.post("/api/admin/policy", json=body, timeout=600))["policy"]

    def policy(self) -> dict | None:
        return self._check(self.admin.get("/api/admin/policy"))["policy"]

    def create_chat_project(self, project: str, kind: str = "chat", instructions: str = "", **settings: Any) -> dict:
        """A chat (or both_sides) project; settings: k, rank_project, rank_labelers_per_item, auto_rank,
        max_new_tokens, temperature."""
        return self._check(self.admin.post("/api/admin/projects", json={
            "name": project, "kind": kind, "instructions": instructions, "settings": settings}))

    def watch(self, round: int | None = None) -> dict:
        return self._check(self.admin.get("/api/admin/watch", params={"round": round} if round is not None else {}))

    def simulate_chats(self, project: str, trainers: Iterable[Any], world: Any, prompts: list[dict],
                       prompts_per_chat: int = 2, seed: int = 0) -> dict[str, int]:
        """Simulated trainers chat with the served policy: each chat asks `prompts_per_chat` world
        prompts in turn (their user messages; the policy answers each), tagging each prompt's last
        user turn with its prompt_id and task, then finishes (which queues a ranking task in a chat
        project with auto_rank). Blocks; returns {trainer: chats finished}."""
        return self._run_trainers(project, trainers, prompts, seed, lambda http, lab, chunk, rng:
                                  self._one_chat(http, project, chunk), prompts_per_chat)

    def simulate_both_sides(self, project: str, trainers: Iterable[Any], world: Any, prompts: list[dict],
                            seed: int = 0) -> dict[str, int]:
        """Simulated trainers write both sides of one-prompt conversations: the user turn from a world
        prompt, the assistant turn from the policy's suggestion, kept when the trainer judges it at
        least as good as the world's ideal answer, else replaced by that answer."""
        single = [p for p in prompts if sum(m["role"] == "user" for m in p["messages"]) == 1]
        return self._run_trainers(project, trainers, single, seed, lambda http, lab, chunk, rng:
                                  self._one_dialogue(http, project, lab, chunk[0], rng), 1)

    def _run_trainers(self, project: str, trainers: Iterable[Any], prompts: list[dict], seed: int, one, per: int
                      ) -> dict[str, int]:
        trainers = list(trainers)
        tokens = {lab.id: self.add_labeler(str(lab.id), group=getattr(lab, "group", None)) for lab in trainers}
        self.assign(project, list(tokens))
        chunks = [prompts[i:i + per] for i in range(0, len(prompts), per)]
        counts: dict[str, int] = {}
        errors: list[BaseException] = []

        def work(k: int, lab: Any) -> None:
            rng = _make_rng(seed + k)
            try:
                with self._http(tokens[lab.id]) as http:
                    mine = chunks[k::len(trainers)]
                    for chunk in mine:
                        one(http, lab, chunk, rng)
                    counts[str(lab.id)] = len(mine)
            except BaseException as e:  # surfaced after join
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k, lab), daemon=True, name=f"trainer-{lab.id}")
                   for k, lab in enumerate(trainers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise LabelingError(f"a simulated trainer failed: {errors[0]}") from errors[0]
        return counts

    def _one_chat(self, http: httpx.Client, project: str, prompts: list[dict]) -> dict:
        chat = self._check(http.post(f"/api/projects/{project}/chats"))
        for p in prompts:
            users = [m["content"] for m in p["messages"] if m["role"] == "user"]
            for i, text in enumerate(users):
                meta = {"prompt_id": p["id"], **({"task": p["task"]} if p.get("task") else {})} \
                    if i == len(users) - 1 else None
                self._check(http.post(f"/api/chats/{chat['id']}/messages",
                                      json={"role": "user", "content": text, "meta": meta}))
        return self._check(http.post(f"/api/chats/{chat['id']}/finish"))

    def _one_dialogue(self, http: httpx.Client, project: str, lab: Any, prompt: dict, rng: random.Random) -> dict:
        chat = self._check(http.post(f"/api/projects/{project}/chats"))
        user = next(m["content"] for m in prompt["messages"] if m["role"] == "user")
        self._check(http.post(f"/api/chats/{chat['id']}/messages", json={
            "role": "user", "content": user, "meta": {"prompt_id": prompt["id"], "task": prompt.get("task")}}))
        suggestion = self._check(http.post(f"/api/chats/{chat['id']}/suggest"))["suggestion"]
        ideal = (prompt.get("reference") or {}).get("ideal") or "I am not sure; could you say more?"
        keep = bool(suggestion.strip()) and lab.compare(prompt, suggestion, ideal, rng) >= 0.5
        self._check(http.post(f"/api/chats/{chat['id']}/messages",
                              json={"role": "assistant", "content": suggestion if keep else ideal}))
        return self._check(http.post(f"/api/chats/{chat['id']}/finish"))

    # --- simulated labelers as API clients -----------------------------------------------------

    def attach_simulated(self, project: str, labelers: Iterable[Any], world: Any = None, seed: int = 0,
                         background: bool = False) -> dict[str, int] | list[threading.Thread]:
        """Register each simulated labeler (`lab.id`, `lab.rank`, `lab.likert`) as a labeler of the
        project and let it work through its queue over HTTP until the queue is empty.

        Blocks and returns {labeler id: answers} unless background=True (then returns the threads)."""
        labelers = list(labelers)
        tokens = {lab.id: self.add_labeler(str(lab.id), group=getattr(lab, "group", None)) for lab in labelers}
        self.assign(project, list(tokens))
        counts: dict[str, int] = {}
        self.errors: list[BaseException] = []
        prompts = self._prompt_index(project, world)
        threads = [threading.Thread(target=self._work, daemon=True, name=f"sim-{lab.id}",
                                    args=(project, lab, tokens[lab.id], prompts, seed + k, counts))
                   for k, lab in enumerate(labelers)]
        for t in threads:
            t.start()
        if background:
            return threads
        for t in threads:
            t.join()
        if self.errors:
            raise LabelingError(f"a simulated labeler failed: {self.errors[0]}") from self.errors[0]
        return counts

    def _work(self, project: str, lab: Any, token: str, prompts: dict, seed: int, counts: dict[str, int]) -> None:
        try:
            self._work_queue(project, lab, token, prompts, seed, counts)
        except BaseException as e:  # surfaced by attach_simulated after join
            self.errors.append(e)

    def _work_queue(self, project: str, lab: Any, token: str, prompts: dict, seed: int, counts: dict[str, int]) -> None:
        rng = _make_rng(seed)
        with self._http(token) as http:
            n = 0
            while True:
                item = self._check(http.post(f"/api/projects/{project}/next"))["item"]
                if item is None:
                    break
                answer = simulated_answer(lab, item, prompts, rng)
                self._check(http.post(f"/api/items/{item['id']}/submit", json=answer))
                n += 1
            counts[str(lab.id)] = n

    def _prompt_index(self, project: str, world: Any) -> dict[str, dict]:
        """item id -> the prompt a simulated labeler judges against, with its gold `reference`
        (which the labeler page hides): the world's prompt when known, else the admin's copy."""
        world_prompts: dict[str, dict] = {}
        for split in ("sft", "rm", "ppo", "eval") if world is not None else ():
            try:
                world_prompts.update({p["id"]: p for p in world.prompts(split)})
            except (KeyError, ValueError, AttributeError):
                continue
        index = {}
        for item in self._check(self.admin.get(f"/api/admin/projects/{project}/items"))["items"]:
            rec = item["payload"]
            pid = rec.get("prompt_id", item["ext_id"])
            index[item["ext_id"]] = world_prompts.get(pid) or {"id": pid, "task": rec.get("task"),
                                                               "messages": rec["messages"],
                                                               "reference": rec.get("reference") or {}}
        return index


def _make_rng(seed: int) -> random.Random:
    """The world draws all its randomness from `random.Random` (world/facts.py, world/tasks.py)."""
    return random.Random(seed)


FLAG_ALIASES = {"fails_to_follow": "fails_instruction", "fails_to_follow_instruction": "fails_instruction",
                "fails_to_follow_instructions": "fails_instruction", "instruction": "fails_instruction",
                "inappropriate": "harmful", "harmful_or_inappropriate": "harmful", "hallucinates": "hallucination",
                "hallucinations": "hallucination", "denigrates": "denigrates_protected_class",
                "denigrates_protected": "denigrates_protected_class", "protected_class": "denigrates_protected_class",
                "sexual_content": "sexual", "violent_content": "violent", "violence": "violent",
                "toxic": "harmful"}  # world/gold.py calls insults "toxic": InstructGPT's "inappropriate"


def simulated_answer(lab: Any, item: dict, prompts: dict[str, dict], rng: Any) -> dict:
    """What a simulated labeler answers to one queue item (rank or likert)."""
    p = item["payload"]
    prompt = prompts.get(item["ext_id"]) or {"id": p.get("prompt_id", item["ext_id"]), "task": p.get("task"),
                                             "messages": p["messages"], "reference": {}}
    if item["kind"] == "rank":
        return {"ranks": _competition([int(r) for r in lab.rank(prompt, p["responses"], rng)])}
    if item["kind"] == "likert":
        from chatrlhf.labeling.tasks import FLAGS

        score, flags = lab.likert(prompt, p["response"], rng)
        mapped = {f: False for f in FLAGS}
        for k, v in (flags or {}).items():
            k = FLAG_ALIASES.get(k, k)
            if k in mapped:
                mapped[k] = mapped[k] or bool(v)
        return {"score": int(min(7, max(1, score))), "flags": mapped}
    raise LabelingError(f"simulated labelers cannot write demonstrations (item {item['ext_id']})")


def _competition(ranks: list[int]) -> list[int]:
    """Re-express any 1-is-best ranking (dense ties like [1, 1, 2]) as competition ranks ([1, 1, 3])."""
    return [1 + sum(1 for s in ranks if s < r) for r in ranks]
