"""Conversations on a replica (replica/conversations.py) against the oracle: a conversation of
four turns (two speakers; turns 0 and 2 supplied as recordings, 1 and 3 spoken by the replica):
turn 3's greedy codes equal transformers' `generate` given the same three turns, whether its
context came from the cached prefix (extended by the recorded turn 2) or was computed from
scratch, and after the window slid past turn 0 on a model with less context; a seeded sampled
turn is the same cached or not. The oracle's prompt is built as a transformers user builds it
(CsmProcessor's chat template over the turns' text and audio, the recordings encoded by
transformers), not by this project's prompt builder and clip encoder. A turn that is cut is
not kept; a second turn on a conversation with one in progress is refused; deleting forgets
the cached prefix."""

import asyncio

import numpy as np
import pytest
import torch
from transformers import CsmProcessor, EncodecFeatureExtractor

from contract.errors import ReplicaError
from contract.job import SpeechJob
from models import GenerationParams, Segment
from models.codec.encode import encode_clip
from models.core.prompt import segment_positions
from models.params import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from replica.config import ReplicaConfig
from stores.conversations import ConversationStore, TurnInProgress
from tests.replica.conftest import sample_pcm

TEXTS = ("Hello there, how are you today?", "I am fine, thank you for asking.", "What did you do yesterday?",
         "I went for a long walk by the river.")


@pytest.fixture
def conversations(tmp_path):
    return ConversationStore(tmp_path / "conversations")


def _job(store, conversation: str, text: str, speaker: int = 0, max_frames: int = 6, temperature: float = 0.0,
         seed: int | None = None, request_id: str = "turn") -> SpeechJob:
    params = GenerationParams(speaker=speaker, temperature=temperature, seed=seed, max_frames=max_frames)
    return SpeechJob(request_id=request_id, texts=(text,), voice=store.resolve("alloy"), params=params,
                     max_audio_s=0.48, conversation=conversation)


async def _speak(replica, job: SpeechJob) -> int:
    """Speak a turn; returns its samples once the next turn's prefix is cached too."""
    samples = sum([len(c) async for c in replica.synthesize(job)])
    await replica.conversations.warmed(job.conversation)
    return samples


def _segments(conversations: ConversationStore, conversation_id: str, codec) -> list[Segment]:
    """The stored turns as context segments (recordings encoded as the replica encodes them)."""
    out = []
    for turn in conversations.get(conversation_id).turns:
        if turn.audio:
            codes = encode_clip(codec, conversations.load_audio(conversation_id, turn))
        else:
            codes = tuple(map(tuple, conversations.load_codes(conversation_id, turn).tolist()))
        out.append(Segment(speaker=turn.speaker, text=turn.text, codes=codes))
    return out


# CSM's chat template, the layout transformers documents for CsmProcessor (a checkpoint ships
# the template; the tiny model has none): per message <bos>[speaker]text<eos>, then, for a
# message with audio, <|AUDIO|> (the processor expands it to one position per Mimi frame of
# the audio) and <|audio_eos|>. test_the_chat_template_renders_csms_documented_layout checks it.
CSM_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ bos_token }}[{{ message['role'] }}]{{ message['content'][0]['text'] }}{{ eos_token }}"
    "{%- if message['content'] | length > 1 -%}<|AUDIO|><|audio_eos|>{%- endif -%}"
    "{%- endfor -%}"
)


def _processor(tiny) -> CsmProcessor:
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE_HZ)
    return CsmProcessor(extractor, tiny.tokenizer, chat_template=CSM_CHAT_TEMPLATE)


def _messages(conversations, conversation_id: str, turns: slice, text: str, speaker: int):
    """The stored turns as a transformers user's conversation (each turn's text and audio), then
    the text to speak; and the codes of the turns the replica generated, by message index. A
    generated turn exists as codes only (its audio decoded from them would encode to other
    codes): its audio here is silence of its length, so the template lays out its frames."""
    messages, generated = [], {}
    for k, turn in enumerate(conversations.get(conversation_id).turns[turns]):
        if turn.audio:
            audio = conversations.load_audio(conversation_id, turn)
        else:
            generated[k] = torch.as_tensor(conversations.load_codes(conversation_id, turn))
            audio = np.zeros(len(generated[k]) * SAMPLES_PER_FRAME, dtype=np.float32)
        messages.append({"role": str(turn.speaker), "content": [{"type": "text", "text": turn.text},
                                                                {"type": "audio", "audio": audio}]})
    messages.append({"role": str(speaker), "content": [{"type": "text", "text": text}]})
    return messages, generated


def _reference(tiny, conversations, conversation_id: str, turns: slice, text: str, speaker: int, n: int) -> torch.Tensor:
    """transformers' greedy generate of `text` after these stored turns: the prompt from
    CsmProcessor's chat template, the recordings encoded by transformers' own path (what
    generate runs on input_values), a generated turn's frames its codes. [n, 32]."""
    model = tiny.model
    messages, generated = _messages(conversations, conversation_id, turns, text, speaker)
    inputs = _processor(tiny).apply_chat_template(messages, tokenize=True, return_dict=True)
    ids = inputs["input_ids"]  # [1, S]
    with torch.no_grad():
        embeds = model._merge_input_ids_with_input_values(ids, inputs["input_values"],
                                                          inputs["input_values_cutoffs"])["inputs_embeds"]
        starts = [*(ids[0] == tiny.tokenizer.bos_token_id).nonzero()[:, 0].tolist(), ids.shape[1]]  # message spans
        for k, codes in generated.items():
            span = torch.arange(starts[k], starts[k + 1])
            frames = span[ids[0, span] == model.config.audio_token_id]
            assert len(frames) == len(codes), "the template laid out another number of frames"
            embeds[0, frames] = model.backbone_model.embed_tokens(codes[None])[0]
        out = model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=n,
                             do_sample=False, depth_decoder_do_sample=False)
    return out[0]  # [n, 32]


def test_the_chat_template_renders_csms_documented_layout(tiny):
    """The template against the rendering transformers documents for CSM conversations."""
    audio = {"type": "audio", "audio": np.zeros(SAMPLES_PER_FRAME, dtype=np.float32)}
    messages = [{"role": "0", "content": [{"type": "text", "text": "One."}, audio]},
                {"role": "1", "content": [{"type": "text", "text": "Two."}, audio]},
                {"role": "0", "content": [{"type": "text", "text": "Three."}]}]
    assert _processor(tiny).apply_chat_template(messages, tokenize=False) == (
        "<|begin_of_text|>[0]One.<|end_of_text|><|AUDIO|><|audio_eos|>"
        "<|begin_of_text|>[1]Two.<|end_of_text|><|AUDIO|><|audio_eos|>"
        "<|begin_of_text|>[0]Three.<|end_of_text|>")


def _dialogue(replica, store, conversations, conversation_id: str, **job) -> None:
    """Turns 0..3 of TEXTS: recordings from speaker 1, the replica speaking as speaker 0."""

    async def run():
        conversations.add_audio_turn(conversation_id, 1, TEXTS[0], sample_pcm(1.0))
        await _speak(replica, _job(store, conversation_id, TEXTS[1], **job))
        conversations.add_audio_turn(conversation_id, 1, TEXTS[2], sample_pcm(0.8, hz=230.0))
        await _speak(replica, _job(store, conversation_id, TEXTS[3], **job))

    asyncio.run(run())


def test_turn_codes_equal_transformers_cached_or_not(make_replica, store, conversations, tiny):
    replica = make_replica(conversations=conversations)
    first = conversations.create()
    _dialogue(replica, store, conversations, first.id)
    turns = conversations.get(first.id).turns
    assert [(t.speaker, bool(t.audio)) for t in turns] == [(1, True), (0, False), (1, True), (0, False)]
    segments = _segments(conversations, first.id, tiny.model.codec_model)
    spoken = torch.tensor(segments[3].codes)
    assert spoken.shape == (6, 32) and torch.equal(spoken, _reference(tiny, conversations, first.id, slice(0, 3),
                                                                        TEXTS[3], 0, 6))
    hits = dict(replica.stats().contexts.num_hits)["conversation"]
    assert hits >= 1  # turn 3 started from turn 1's warmed prefix, extended by the recording of turn 2
    positions = {(kind, how): n for kind, how, n in replica.stats().contexts.num_positions}
    recorded = segment_positions(tiny.tokenizer, segments[2])
    # turn 1 computed turn 0 (no prefix yet); turn 3 reused turns 0-1 and computed only the recording of turn 2
    assert positions["conversation", "computed"] == segment_positions(tiny.tokenizer, segments[0]) + recorded
    assert positions["conversation", "reused"] == sum(segment_positions(tiny.tokenizer, s) for s in segments[:2])

    # the same three turns in a conversation this replica never held: computed from scratch
    second = conversations.create()
    conversations.add_audio_turn(second.id, 1, TEXTS[0], sample_pcm(1.0))
    conversations.add_generated_turn(second.id, 0, segments[1].text, np.asarray(segments[1].codes))
    conversations.add_audio_turn(second.id, 1, TEXTS[2], sample_pcm(0.8, hz=230.0))
    asyncio.run(_speak(replica, _job(store, second.id, TEXTS[3])))
    assert dict(replica.stats().contexts.num_hits)["conversation"] == hits  # a miss, no hit
    assert torch.equal(torch.tensor(_segments(conversations, second.id, tiny.model.codec_model)[3].codes), spoken)


def test_a_sampled_turn_is_the_same_from_the_cached_prefix(make_replica, store, conversations, tiny):
    replica = make_replica(conversations=conversations)
    sampled = {"temperature": 0.9, "seed": 7}
    warm = conversations.create()
    _dialogue(replica, store, conversations, warm.id, **sampled)
    segments = _segments(conversations, warm.id, tiny.model.codec_model)
    cold = conversations.create()
    for s in segments[:3]:  # turn 1 as the first replica spoke it
        if s.speaker == 1:
            conversations.add_audio_turn(cold.id, 1, s.text, sample_pcm(1.0) if s.text == TEXTS[0]
                                         else sample_pcm(0.8, hz=230.0))
        else:
            conversations.add_generated_turn(cold.id, 0, s.text, np.asarray(s.codes))
    fresh = make_replica(conversations=conversations)  # another replica: nothing cached
    asyncio.run(_speak(fresh, _job(store, cold.id, TEXTS[3], **sampled)))
    again = _segments(conversations, cold.id, tiny.model.codec_model)[3]
    assert again.codes == segments[3].codes


def test_the_window_slides_past_the_oldest_turn(make_replica, store, conversations, tiny):
    """A model with too little context for all three turns: turn 0 drops out, and turn 3
    equals transformers given turns 1 and 2 only."""
    big = make_replica(conversations=conversations)
    conversation = conversations.create()
    _dialogue(big, store, conversations, conversation.id)
    segments = _segments(conversations, conversation.id, tiny.model.codec_model)
    positions = [segment_positions(tiny.tokenizer, s) for s in segments[:3]]
    job = _job(store, conversation.id, TEXTS[3], request_id="slid")
    new_turn = segment_positions(tiny.tokenizer, Segment(speaker=0, text=TEXTS[3])) + big._room_frames(job)
    max_seq_len = positions[1] + positions[2] + new_turn + positions[0] // 2  # turns 1, 2 fit; 0 does not
    small = make_replica(conversations=conversations, max_seq_len=max_seq_len, max_frames_cap=16,
                         config=ReplicaConfig(chunk_s=0.16, realtime_admission=False, conversation_refill=1.0))
    replay = conversations.create()
    for s, turn in zip(segments[:3], conversations.get(conversation.id).turns[:3]):
        if turn.audio:
            conversations.add_audio_turn(replay.id, 1, s.text, conversations.load_audio(conversation.id, turn))
        else:
            conversations.add_generated_turn(replay.id, 0, s.text, np.asarray(s.codes))
    asyncio.run(_speak(small, _job(store, replay.id, TEXTS[3])))
    spoken = torch.tensor(_segments(conversations, replay.id, tiny.model.codec_model)[3].codes)
    assert torch.equal(spoken, _reference(tiny, conversations, replay.id, slice(1, 3), TEXTS[3], 0, 6))
    assert not torch.equal(spoken, _reference(tiny, conversations, replay.id, slice(0, 3), TEXTS[3], 0, 6))  # the window did matter


@pytest.mark.parametrize("refill", [0.5, 1.0])
def test_after_a_slide_the_next_turns_extend_the_new_window(make_replica, store, conversations, refill):
    """A dialogue longer than a small model's context: with refill 0.5 a slide leaves room, so
    the turns after it reuse the slid window's cached prefix; with 1.0 (always the most turns
    that fit) every turn past the first slide slides again and recomputes its whole window."""
    replica = make_replica(conversations=conversations, max_seq_len=128, max_frames_cap=16,
                           config=ReplicaConfig(chunk_s=0.16, realtime_admission=False, conversation_refill=refill))
    conversation = conversations.create()
    used = []

    async def run():
        for k in range(10):
            before = {how: n for kind, how, n in replica.stats().contexts.num_positions if kind == "conversation"}
            await _speak(replica, _job(store, conversation.id, f"Turn number {k}.", request_id=f"t{k}"))
            after = {how: n for kind, how, n in replica.stats().contexts.num_positions if kind == "conversation"}
            used.append((after["reused"] - before["reused"], after["computed"] - before["computed"]))

    asyncio.run(run())
    slid = [k for k in range(2, len(used)) if used[k][0] == 0]  # nothing reused: the window moved
    assert slid, used  # the dialogue outgrew the context
    after_first = used[slid[0] + 1:]
    if refill == 0.5:  # each turn after a slide reuses its window (but one in a few slides again)
        assert sum(reused > 0 for reused, _ in after_first) > len(after_first) / 2, used
    else:
        assert all(reused == 0 for reused, _ in after_first), used


def test_a_cut_turn_is_not_kept_and_turns_are_ordered(make_replica, store, conversations):
    replica = make_replica(conversations=conversations)
    conversation = conversations.create()

    async def run():
        stream = replica.synthesize(_job(store, conversation.id, TEXTS[1], max_frames=20))
        await anext(stream)  # the turn is under way: a second one is refused
        with pytest.raises(ReplicaError) as refused:
            await _speak(replica, _job(store, conversation.id, TEXTS[3], request_id="second"))
        await stream.aclose()  # the listener left: nothing kept, the lock released
        await _speak(replica, _job(store, conversation.id, TEXTS[3], request_id="third"))
        return refused.value.info

    info = asyncio.run(run())
    assert (info.kind, info.param, info.code) == ("conflict", "conversation", "turn_in_progress")
    assert [t.text for t in conversations.get(conversation.id).turns] == [TEXTS[3]]
    with conversations.turn(conversation.id), pytest.raises(TurnInProgress):  # free again, then held
        with conversations.turn(conversation.id):
            pass


def test_deleting_forgets_the_prefix_and_unknown_ids_are_not_found(make_replica, store, conversations):
    replica = make_replica(conversations=conversations)
    conversation = conversations.create()

    async def run():
        await _speak(replica, _job(store, conversation.id, TEXTS[1]))
        held = replica.stats().contexts.num_entries
        conversations.delete(conversation.id)
        forgotten = await replica.conversations.sync()
        with pytest.raises(ReplicaError) as gone:
            await _speak(replica, _job(store, conversation.id, TEXTS[3]))
        return held, forgotten, gone.value.info

    held, forgotten, info = asyncio.run(run())
    assert held == 1 and forgotten == [conversation.id] and replica.stats().contexts.num_entries == 0
    assert (info.kind, info.code) == ("not_found", "conversation_not_found")
