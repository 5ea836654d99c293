from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    name = "parley_runtime"
    label = "parley_runtime"

    def ready(self) -> None:
        from parley_runtime import log_selection

        log_selection()  # after Django configured logging: the warning is a JSON line too
