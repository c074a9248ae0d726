"""The two requests every job test starts with, each asserting its status: upload a video, start a job on it."""

import httpx


def upload_video(client: httpx.Client, body: bytes, name: str = "video.mp4") -> str:
    """The uploaded video's file id."""
    response = client.post("/v1/files", data={"purpose": "vision"}, files={"file": (name, body, "video/mp4")})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def start_job(client: httpx.Client, file_id: str, **fields) -> dict:
    """The job as its 202 answers it; ``fields`` beside the file and a question."""
    response = client.post("/v1/video/jobs", json={"file_id": file_id, "question": "What happens?", **fields})
    assert response.status_code == 202, response.text
    return response.json()
