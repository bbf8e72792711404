"""A backend's side of roomcast, as tests/auth/interop.rs drives it: PyJWT mints user tokens,
the standard library posts to the publish API. It opens no WebSocket itself.

    python interop.py mint < plan.json    # {"users": [{"id", "name", "rooms"?, "publish"?, "float_times"?}]}
    python interop.py post < plan.json    # {"bases": [...], "room", "posts": [...]}

Both read the secrets from the environment (ROOMCAST_AUTH_SECRET, ROOMCAST_API_KEY), never
from the command line, and print one JSON object on stdout.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import jwt


def mint_token(user_id, name, secret, rooms=None, publish=None, lifetime=300):
    """What a Django view returns to a signed-in user: an HS256 token roomcast accepts."""
    now = int(time.time())
    claims = {"sub": str(user_id), "name": name[:64], "aud": "roomcast", "iat": now, "exp": now + lifetime}
    if rooms is not None:
        claims["rooms"] = rooms  # names or "prefix-*" patterns; absent means every room
    if publish is not None:
        claims["publish"] = publish  # absent means every room in "rooms"
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_token_with_float_times(user_id, secret, lifetime=300):
    """Claims straight from time.time(), fractions kept: RFC 7519 NumericDates may be
    non-integer, and PyJWT passes them through as they are."""
    now = time.time()
    claims = {"sub": str(user_id), "aud": "roomcast", "iat": now, "nbf": now, "exp": now + lifetime}
    return jwt.encode(claims, secret, algorithm="HS256")


def post_message(base_url, api_key, room, message, user=None, idempotency_key=None):
    """Publishes `message` in `room` as `user` ({"id", "name"}); returns {"seq", "epoch"}."""
    body = {"message": message}
    if user is not None:
        body["user"] = user
    request = urllib.request.Request(
        f"{base_url}/api/rooms/{room}/messages",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    if idempotency_key is not None:
        request.add_header("Idempotency-Key", idempotency_key)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def mint(plan):
    secret = os.environ["ROOMCAST_AUTH_SECRET"]
    tokens = {}
    for user in plan["users"]:
        if user.get("float_times"):
            token = mint_token_with_float_times(user["id"], secret)
        else:
            token = mint_token(user["id"], user["name"], secret, user.get("rooms"), user.get("publish"))
        # PyJWT reads back what it wrote, under the audience roomcast checks.
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience="roomcast")
        assert claims["sub"] == user["id"], claims
        tokens[user["id"]] = token
    return {"tokens": tokens, "pyjwt": jwt.__version__}


def post(plan):
    api_key = os.environ["ROOMCAST_API_KEY"]
    answers = []
    for step in plan["posts"]:
        base = plan["bases"][step["via"]]
        key = api_key if step.get("key", "right") == "right" else "not-" + api_key
        try:
            answer = post_message(
                base, key, plan["room"], step["message"], step.get("user"), step.get("idempotency_key")
            )
            answers.append({"status": 200, "answer": answer})
        except urllib.error.HTTPError as error:
            answers.append({"status": error.code, "answer": json.load(error)})
    return {"answers": answers}


if __name__ == "__main__":
    command = {"mint": mint, "post": post}[sys.argv[1]]
    print(json.dumps(command(json.load(sys.stdin))))
