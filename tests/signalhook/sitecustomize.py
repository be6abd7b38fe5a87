"""Test harness, on PYTHONPATH only in tests: `AVTOOL_TEST_SIGNAL=PHASE:SIGNAME:process|group` makes the dance
pipeline send itself (or its process group) that signal when it reaches PHASE: sampling, decode or write
(the encoder running, the first frames piped into it)."""

import os

_spec = os.environ.get("AVTOOL_TEST_SIGNAL")
if _spec:
    import signal

    from avtool.pipelines import dance

    _phase, _name, _target = _spec.split(":")

    def _send() -> None:
        signum = getattr(signal, _name)
        if _target == "group":
            os.killpg(os.getpgid(0), signum)
        else:
            os.kill(os.getpid(), signum)

    def _signal_then(function):
        def wrapper(*args, **kwargs):
            _send()
            return function(*args, **kwargs)

        return wrapper

    def _signal_while_writing(write_video):
        def wrapper(frames, *args, **kwargs):
            def frames_then_signal():
                for frame in frames:
                    yield frame
                    _send()

            return write_video(frames_then_signal(), *args, **kwargs)

        return wrapper

    if _phase == "sampling":
        dance.sample_latents = _signal_then(dance.sample_latents)
    elif _phase == "decode":
        dance.decode_latents = _signal_then(dance.decode_latents)
    elif _phase == "write":
        dance.write_video = _signal_while_writing(dance.write_video)
