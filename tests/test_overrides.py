"""--set values the shell stripped of their quotes: the error shows the quoted form to type."""

import pytest

from pxpo.config import ConfigError, apply_overrides, load_config, parse_override


def test_a_list_of_bare_words_suggests_the_quoted_form():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["run.log_with=[tensorboard]"])  # what the shell leaves of run.log_with=["tensorboard"]
    message = str(info.value)
    assert "\n" not in message and "double quotes" in message
    assert message.endswith("""write --set 'run.log_with=["tensorboard"]'""")


def test_lists_and_tables_keep_what_is_already_toml():
    with pytest.raises(ConfigError, match=r"""--set 'sample.prompts=\["red taxi", "blue car", 3\]'"""):
        parse_override("sample.prompts=[red taxi, blue car, 3]")
    with pytest.raises(ConfigError, match=r"""--set 'reward.kwargs=\{colour = "blue", weight = 1.5\}'"""):
        apply_overrides({}, ["reward.kwargs={colour = blue, weight = 1.5}"])


def test_quoted_lists_and_bare_words_still_parse():
    assert parse_override('run.log_with=["tensorboard"]') == (["run", "log_with"], ["tensorboard"])
    assert parse_override("model.pretrained=some-org/some-model") == (["model", "pretrained"], "some-org/some-model")
    assert parse_override("reward.kwargs={hair = -1.0}") == (["reward", "kwargs"], {"hair": -1.0})
