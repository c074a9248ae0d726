import numpy as np
import pytest
import transformers

from memory.strategy import parse_strategy
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter, InvalidModelInputError, ModelNotLoadedError
from models.requests import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart

pytestmark = pytest.mark.unit

QUESTION = "What is happening here?"


def _request(*parts, max_new_tokens=6, temperature=0.0, seed=None) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage(role="user", content=tuple(parts)),),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )


def _image(height=96, width=128, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _video(frames=4, height=64, width=96, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def processor(tiny_model_path):
    return transformers.AutoProcessor.from_pretrained(tiny_model_path)


def _visual_tokens(processor, *, image=None, video=None) -> int:
    """Placeholder tokens the processor expands one image or video into (plus start/end markers)."""
    if image is not None:
        grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    else:
        grid = processor.video_processor(videos=[video], return_tensors="pt")["video_grid_thw"][0]
    return int(grid.prod()) // processor.image_processor.merge_size**2 + 2


def test_text_only(tiny_adapter):
    result = tiny_adapter.generate(_request(TextPart(QUESTION), max_new_tokens=6))

    assert isinstance(result.text, str)
    assert result.prompt_tokens > 10
    assert 1 <= result.completion_tokens <= 6
    assert result.finish_reason == ("length" if result.completion_tokens == 6 else "stop")
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens


def test_one_image_adds_its_visual_tokens(tiny_adapter, processor):
    image = _image()
    text_only = tiny_adapter.generate(_request(TextPart(QUESTION)))

    with_image = tiny_adapter.generate(_request(ImagePart(image), TextPart(QUESTION)))

    assert with_image.prompt_tokens - text_only.prompt_tokens == _visual_tokens(processor, image=image)


def test_one_video_adds_its_visual_tokens(tiny_adapter, processor):
    video = _video()
    text_only = tiny_adapter.generate(_request(TextPart(QUESTION)))

    with_video = tiny_adapter.generate(_request(VideoPart(video), TextPart(QUESTION)))

    assert with_video.prompt_tokens - text_only.prompt_tokens == _visual_tokens(processor, video=video)


def test_image_plus_video(tiny_adapter, processor):
    image, video = _image(seed=3), _video(frames=6, seed=4)
    text_only = tiny_adapter.generate(_request(TextPart(QUESTION)))

    both = tiny_adapter.generate(_request(ImagePart(image), VideoPart(video), TextPart(QUESTION)))

    expected = _visual_tokens(processor, image=image) + _visual_tokens(processor, video=video)
    assert both.prompt_tokens - text_only.prompt_tokens == expected
    assert both.completion_tokens >= 1


def test_greedy_is_deterministic_and_seeded_sampling_repeats(tiny_adapter):
    request = _request(ImagePart(_image()), TextPart(QUESTION), max_new_tokens=8)
    assert tiny_adapter.generate(request) == tiny_adapter.generate(request)

    sampled = _request(TextPart(QUESTION), max_new_tokens=8, temperature=1.0, seed=7)
    assert tiny_adapter.generate(sampled).text == tiny_adapter.generate(sampled).text


def test_system_and_assistant_turns_count_as_prompt(tiny_adapter):
    single = tiny_adapter.generate(_request(TextPart(QUESTION)))
    conversation = GenerationRequest(
        messages=(
            ChatMessage(role="system", content=(TextPart("You describe videos."),)),
            ChatMessage(role="user", content=(TextPart("Hello"),)),
            ChatMessage(role="assistant", content=(TextPart("Hi."),)),
            ChatMessage(role="user", content=(TextPart(QUESTION),)),
        ),
        max_new_tokens=4,
    )

    assert tiny_adapter.generate(conversation).prompt_tokens > single.prompt_tokens


def test_describe_reports_what_is_loaded(tiny_adapter):
    description = tiny_adapter.describe()

    assert description["loaded"] is True
    assert description["model_type"] == "qwen2_vl"
    assert description["dtype"] == "float32"
    assert description["precision"] == "fp32"
    assert 100_000 < description["parameters"] < 1_000_000


@pytest.mark.parametrize(("strategy", "dtype"), [("bf16", "bfloat16"), ("int8", "bfloat16"), ("nf4", "bfloat16")])
def test_every_cpu_strategy_loads_and_generates_with_media(tiny_model_path, strategy, dtype):
    adapter = HuggingFaceVisionLanguageAdapter(str(tiny_model_path), strategy=parse_strategy(strategy, "cpu"))
    adapter.load()

    description = adapter.describe()
    assert (description["precision"], description["dtype"]) == (strategy, dtype)
    result = adapter.generate(_request(ImagePart(_image()), VideoPart(_video()), TextPart(QUESTION), max_new_tokens=2))
    assert result.completion_tokens >= 1


def test_generate_before_load_names_the_fix(tiny_model_path):
    adapter = HuggingFaceVisionLanguageAdapter(str(tiny_model_path))

    with pytest.raises(ModelNotLoadedError, match="call load"):
        adapter.generate(_request(TextPart(QUESTION)))


def test_an_image_the_processor_refuses_is_an_input_error(tiny_adapter):
    sliver = np.zeros((2, 900, 3), dtype=np.uint8)  # aspect ratio 450: Qwen2-VL refuses above 200

    with pytest.raises(InvalidModelInputError, match="aspect ratio"):
        tiny_adapter.generate(_request(ImagePart(sliver), TextPart(QUESTION)))
