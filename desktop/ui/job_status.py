"""What the bottom of the window says about jobs: progress, the status line, previews on the canvas,
warnings and failures in the message bar. Turns the controller's events into those, and nothing else."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal, Slot

from desktop.bridge.controller import GenerationController
from desktop.engine.edit_inputs import step_words
from desktop.engine.events import (
    ImageSaved,
    ImageUnsaved,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
    JobWarning,
    ModelCompiling,
    ModelLoaded,
    ModelLoading,
    PreviewReady,
    PreviewsFitting,
    PromptRewriting,
    StepProgress,
)
from desktop.engine.request import GenerationRequest
from desktop.ui.canvas import MaskCanvas
from desktop.ui.queue_panel import QueuePanel


class JobStatus(QObject):
    """Follows the current job for the queue panel and the canvas.

    Signals:
        seed_drawn(object): the job that just started uses this seed (drawn, when the request said random).
        preview_shown(): the canvas now shows a preview instead of a finished image.
        results_ready(object, object): the finished job's image paths and seeds (two lists).
    """

    seed_drawn = Signal(object)  # object: seeds go up to 2**32 - 1, past a C int
    preview_shown = Signal()
    results_ready = Signal(object, object)

    def __init__(
        self,
        controller: GenerationController,
        queue_panel: QueuePanel,
        canvas: MaskCanvas,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._controller = controller
        self._queue_panel = queue_panel
        self._message_bar = queue_panel.message_bar
        self._canvas = canvas
        self._job_id: str | None = None
        self._request: GenerationRequest | None = None
        self._display_size: tuple[int, int] | None = None
        self._images_total = 0
        self._previews_shown = 0
        self._state_text = self.tr("Ready")
        for signal, slot in (
            (controller.busy_changed, self._on_busy_changed),
            (controller.queue_changed, self.update_status),
            (controller.job_started, self._on_job_started),
            (controller.model_loading, self._on_model_loading),
            (controller.model_loaded, self._on_model_loaded),
            (controller.model_compiling, self._on_model_compiling),
            (controller.previews_fitting, self._on_previews_fitting),
            (controller.prompt_rewriting, self._on_prompt_rewriting),
            (controller.step_progressed, self._on_step_progressed),
            (controller.preview_ready, self._on_preview_ready),
            (controller.job_warning, self._on_job_warning),
            (controller.image_saved, self._on_image_saved),
            (controller.job_finished, self._on_job_finished),
            (controller.job_failed, self._on_job_failed),
            (controller.job_cancelled, self._on_job_cancelled),
            (controller.image_unsaved, self._on_image_unsaved),
        ):
            signal.connect(slot)

    @property
    def previews_shown(self) -> int:
        """Previews the canvas showed for the current (or last) job."""
        return self._previews_shown

    def set_state(self, text: str) -> None:
        self._state_text = text
        self.update_status()

    @Slot()
    def update_status(self) -> None:
        queued = len(self._controller.pending_jobs())
        text = self.tr("{state} · {queued} queued").format(state=self._state_text, queued=queued)
        self._queue_panel.set_status(text if queued else self._state_text)

    @Slot(bool)
    def _on_busy_changed(self, busy: bool) -> None:
        self._queue_panel.set_busy(busy)
        if not busy:
            self.update_status()

    @Slot(object)
    def _on_job_started(self, event: JobStarted) -> None:
        request = event.request
        self._job_id = event.job_id
        self._request = request
        # With the hires fix the canvas shows both passes' previews at the final size, so it does not jump.
        self._display_size = request.hires_size if request.hires_active else (request.width, request.height)
        self._images_total = request.images_total
        self._previews_shown = 0
        self.seed_drawn.emit(request.seed)
        self._queue_panel.reset_progress(self.tr("Starting…"))
        self.set_state(self.tr("Running, seed {seed}").format(seed=request.seed))

    @Slot(object)
    def _on_model_loading(self, event: ModelLoading) -> None:
        self._queue_panel.show_waiting(self.tr("Loading {model}…").format(model=event.model))

    @Slot(object)
    def _on_model_loaded(self, event: ModelLoaded) -> None:
        self._queue_panel.reset_progress(self.tr("Model ready"))
        if not event.reused:
            loaded = self.tr("Loaded {model} in {seconds:.1f} s")
            self.set_state(loaded.format(model=event.model, seconds=event.seconds))

    @Slot(object)
    def _on_model_compiling(self, event: ModelCompiling) -> None:
        if event.job_id == self._job_id:
            # Busy, not a step count: the first step comes when the compile is done.
            self._queue_panel.show_waiting(self.tr("Compiling the model (first fast-mode image)…"))

    @Slot(object)
    def _on_previews_fitting(self, event: PreviewsFitting) -> None:
        if event.job_id == self._job_id:
            self._queue_panel.show_waiting(self.tr("Preparing live previews for this model (once)…"))

    @Slot(object)
    def _on_prompt_rewriting(self, event: PromptRewriting) -> None:
        if event.job_id == self._job_id:
            self._queue_panel.show_waiting(self.tr("Rewriting the prompt (FLUX.3's prompt rewriter)…"))

    @Slot(object)
    def _on_step_progressed(self, event: StepProgress) -> None:
        if event.job_id == self._job_id:
            words = step_words(event.step, event.total, self._request) if self._request is not None else ""
            self._queue_panel.show_progress(event.step, event.total, event.batch_index, event.batch_count, words)

    @Slot(object)
    def _on_preview_ready(self, event: PreviewReady) -> None:
        if event.job_id != self._job_id:
            return
        try:
            self._canvas.show_preview(event.image, self._display_size)
        except ValueError:
            return  # a malformed preview is not worth interrupting the job for
        self._previews_shown += 1
        self.preview_shown.emit()

    @Slot(object)
    def _on_job_warning(self, event: JobWarning) -> None:
        # Engine messages stay English (shared with the CLI and the logs).
        self._message_bar.show_message(event.message, "warning", append=True)

    @Slot(object)
    def _on_image_saved(self, event: ImageSaved) -> None:
        self.set_state(self.tr("Saved {index}/{total}").format(index=event.index + 1, total=self._images_total))

    @Slot(object)
    def _on_image_unsaved(self, event: ImageUnsaved) -> None:
        count = len(self._controller.pending_images)
        # event.message comes from the engine (English, shared with the CLI).
        kept = (self.tr("1 image is kept in memory: use File > Save unsaved images… to put it in another folder.")
                if count == 1 else
                self.tr("{count} images are kept in memory: use File > Save unsaved images… to put them in "
                        "another folder.").format(count=count))
        self._message_bar.show_message(f"{event.message} {kept}", "error")

    @Slot(object)
    def _on_job_finished(self, event: JobFinished) -> None:
        self.results_ready.emit(list(event.paths), list(event.seeds))
        count = len(event.paths)
        done = (self.tr("Done: 1 image in {seconds:.1f} s") if count == 1
                else self.tr("Done: {count} images in {seconds:.1f} s"))
        self.set_state(done.format(count=count, seconds=event.seconds))

    @Slot(object)
    def _on_job_failed(self, event: JobFailed) -> None:
        self._message_bar.show_message(event.message, "error", append=True)
        if event.job_id == self._job_id:
            self._queue_panel.reset_progress(self.tr("Failed"))
        self.set_state(self.tr("Failed"))

    @Slot(object)
    def _on_job_cancelled(self, event: JobCancelled) -> None:
        if event.job_id == self._job_id:
            self._queue_panel.reset_progress(self.tr("Cancelled"))
            self.set_state(self.tr("Cancelled"))
        else:
            self.update_status()
