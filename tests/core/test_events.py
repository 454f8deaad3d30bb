"""The one event format (solo_sparse.core.events): what a plugin prints is what the report and the bench read."""
import pytest

from solo_sparse.core import events


@pytest.mark.parametrize("kind,at,kw", [
    ("csi", 40, dict(I=0.3, r=0.0, gap=0.3, note=" (rule literal: fires at r <= 0.02)")),
    ("csi", 7, dict(I=0.25, r=0.125)),
    ("schedule_start", 117, dict(cause="csi_timeout reached", note="; cubic ramp to the final density over steps 117..200")),
    ("schedule_start", 5, dict(cause="CSI fired")),
    ("pairs", 3, dict(positives=0.8123, random=-0.2011, shift=0.00412)),
    ("pairs", 0, dict(positives=0.8, random=0.2)),
    ("probe", 64, dict(online_momentum_cos=0.9912, key_drift_cos=0.999)),
    ("probe", 32, dict(online_momentum_cos=0.91)),
])
def test_every_kind_reads_back_what_it_wrote(kind, at, kw):
    text = events.line("synccp", kind, at, **kw)
    ev = events.parse("[rank: 0] " + text)                     # a logger may prefix the line
    assert ev is not None and (ev.plugin, ev.kind, ev.at) == ("synccp", kind, at)
    fields = {k: v for k, v in kw.items() if k != "note"}
    for key, _ in events.KINDS[kind].fields:
        assert ev.values[key] == (None if fields.get(key) is None else pytest.approx(fields[key], abs=1e-4))
    if "cause" in fields:
        assert ev.values["cause"] == fields["cause"]


def test_the_lines_runs_have_always_printed_still_read():
    """Logs of committed results were written before this module: the same text."""
    old = {
        "solo-sparse synccp step 5: CSI I=0.3000 r=0.0000 gap=0.3000 (rule literal: fires at r <= 0.02)":
            ("csi", 5, {"I": 0.3, "r": 0.0, "gap": 0.3}),
        "solo-sparse synccp step 117: schedule starts (csi_timeout reached); cubic ramp ...":
            ("schedule_start", 117, {"cause": "csi_timeout reached"}),
        "solo-sparse cdg epoch 2: pair cosine positives=0.8251 random=0.5559 shift=0.00065":
            ("pairs", 2, {"positives": 0.8251, "random": 0.5559, "shift": 0.00065}),
        "solo-sparse cdg probe 32: online_momentum_cos=0.9100":
            ("probe", 32, {"online_momentum_cos": 0.91, "key_drift_cos": None}),
    }
    for text, (kind, at, values) in old.items():
        ev = events.parse(text)
        assert (ev.kind, ev.at) == (kind, at) and all(ev.values[k] == v for k, v in values.items()), text
        assert events.line(ev.plugin, kind, at, **{k: v for k, v in ev.values.items() if k != "cause"},
                           **({"cause": ev.values["cause"]} if "cause" in ev.values else {})) in text


def test_messages_and_other_lines_are_not_events(capsys):
    assert events.emit("synccp", "message", 3, note="CSI I=0.5000 between consecutive epochs (fires at < 0.1)")
    assert capsys.readouterr().err == "solo-sparse synccp step 3: CSI I=0.5000 between consecutive epochs (fires at < 0.1)\n"
    for text in ("solo-sparse synccp step 3: CSI I=0.5000 between consecutive epochs", "noise", "",
                 "solo-sparse: loaded cdg backbone, evaluating the gated path"):
        assert events.parse(text) is None


def test_a_wrong_event_is_refused_where_it_is_written():
    with pytest.raises(ValueError, match="no field"):
        events.line("x", "csi", 1, I=0.1, r=0.1, R=3)
    with pytest.raises(ValueError, match="needs field 'r'"):
        events.line("x", "csi", 1, I=0.1)
    with pytest.raises(ValueError, match="cause must be one of"):
        events.line("x", "schedule_start", 1, cause="because")


def test_log_files_order_and_read(tmp_path):
    import os

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.log").write_text(events.line("p", "probe", 2, online_momentum_cos=0.5) + "\n")
    (tmp_path / "z.log").write_text("noise\n" + events.line("p", "probe", 1, online_momentum_cos=0.25) + "\n")
    os.utime(tmp_path / "b" / "a.log", (2000, 2000))
    os.utime(tmp_path / "z.log", (1000, 1000))
    assert [e.at for e in events.read(events.log_files(tmp_path))] == [1, 2]             # oldest first
    assert [e.at for e in events.read(events.log_files(tmp_path, by="name"))] == [2, 1]  # by path
    assert events.log_files(tmp_path / "absent") == []
