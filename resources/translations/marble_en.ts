<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE TS>
<TS version="2.1" language="en" sourcelanguage="en">
<context>
    <name>App</name>
    <message>
        <source>The history is unavailable: {problem}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>BackgroundReads</name>
    <message>
        <source>Cannot read the models folder {folder}: {reason}.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>CanvasToolbar</name>
    <message>
        <source>Text to image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Image to image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Inpaint</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Outpaint</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Whole picture</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Only masked</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Resize</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Pad</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Left </source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Grow the canvas on the left</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Top </source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Grow the canvas on the top</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Right </source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Grow the canvas on the right</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Bottom </source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Grow the canvas on the bottom</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Use as source</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Edit the image on the canvas</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No source image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Pan</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Drag to move the view</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Brush</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Paint the area to repaint</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Eraser</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Erase the mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source> px</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Brush size (image pixels)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Brush hardness</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Show the mask overlay</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Mask overlay opacity</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Invert</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Invert the mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clear</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clear the mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Fill</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Mask everything</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Undo</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Undo the last mask edit (Ctrl+Z)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Redo</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Redo (Ctrl+Shift+Z)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Load mask…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Load a mask PNG (white = repaint)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Save mask…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Save the mask as a PNG (white = repaint)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Mask blur: feather the mask edge</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Padding around the mask for &quot;Only masked&quot;</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>How a source whose sides are not multiples of 8 is made to fit the model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Extend</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Grow the canvas and mask the new area for outpainting</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Strength</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Fit</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Hardness</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Mask blur</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Padding</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Extend canvas</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Show a finished image on the canvas first, or drop an image file on it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot open {name}: it is missing, too large, or not an image.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The clipboard holds no image. Copy a picture first, or drop an image file.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>edited canvas</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Source: {name} ({width}x{height})</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>There is no mask yet: pick a source image and paint on it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Pick a source image before loading a mask for it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{name} is too large to be a mask.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot read {name} as an image: {reason}.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Load mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Image-to-image needs a source: drop an image on the canvas or use &quot;Use as source&quot;.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Nothing to outpaint yet: set how far to grow each side and press Extend.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The mask is empty: paint the area to repaint with the brush first.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Pick a source image first: drop one on the canvas or use &quot;Use as source&quot;.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Images (*.png *.jpg *.jpeg *.webp)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Save mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>PNG images (*.png)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Text to image: the canvas shows previews and results. Drag to move the view, wheel to zoom.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{mode}: Drop an image on the canvas, paste one (Ctrl+V) or press &quot;Use as source&quot; first.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Image to image: the source is redrawn at strength {strength}. Drag to move the view, wheel to zoom.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Outpaint: set how far to grow each side, then Extend; the new area is then painted in.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Drag to paint the area to repaint (brush {size} px).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Drag to erase from the area to repaint (eraser {size} px).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Inpaint: pick Brush and drag over the area to repaint; here a drag moves the view.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>CanvasView</name>
    <message>
        <source>Your image appears here</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ControlDrawBar</name>
    <message>
        <source>Scribble</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Draw white lines of the control image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Erase</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Erase lines back to black</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source> px</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Scribble width (image pixels)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>How much the black backdrop hides the picture under the drawing</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clear</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clear the drawing to black</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Undo</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Undo the last edit (Ctrl+Z)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Redo</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Redo (Ctrl+Shift+Z)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Done</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Use the drawing as the unit&apos;s control image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Control drawing:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Backdrop</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ControlDrawing</name>
    <message>
        <source>This unit&apos;s image is not an edge or scribble map: there is nothing to edit.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot edit the control image: {error}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Edit control image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot save the control drawing: {error}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ControlLayer</name>
    <message>
        <source>Clear drawing</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ControlListWidget</name>
    <message>
        <source>None (image as is)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Canny edges</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Soft edges</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Scribble</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Tile (blur)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Inpaint</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Blur (Gaussian)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Grayscale (luminance)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>IP-Adapter (reference image)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Depth (imported model)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Lineart (imported model)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>OpenPose (imported model)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>OpenPose with hands (imported models)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>OpenPose with face (imported models)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>OpenPose full (imported models)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Balanced</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Prompt is more important</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Control is more important</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Add control unit</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Made for another kind of model than the chosen one: a job with it is refused</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Show a finished image on the canvas first, or choose a file.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot save the canvas picture: {error}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Control image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Images (*.png *.jpg *.jpeg *.webp)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reference images</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>An IP-Adapter unit takes at most {count} reference images.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Give the model its control picture (a canny or depth map, or the preprocessor that makes one)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No control models in the library yet: import some with File ▸ Library…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No control models in the library are made for the chosen model: import some with File ▸ Library…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Guide the composition with a control image (ControlNet, T2I-Adapter)</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ErrorHook</name>
    <message>
        <source>The details are in the log: {file}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No log file is kept.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Something went wrong inside Marble Studio: {summary}

{where}

The app keeps running; if something looks wrong, save your work and restart it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Unexpected error</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>HistoryDescription</name>
    <message>
        <source>Device</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Time</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Created</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>File</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>In the trash</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Favourite</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Negative prompt: {negative}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Model hash</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>LoRA hashes</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Seed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Sampler</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Steps</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CFG scale</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>  (missing)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>yes</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>HistoryDetailView</name>
    <message>
        <source>Image details</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{name} — image details</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{file} is missing: it was moved or deleted outside Marble.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot read {file}: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>HistoryFilters</name>
    <message>
        <source>Any time</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Today</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Last 7 days</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Last 30 days</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Search prompts</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>★ only</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Newest first</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Oldest first</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Trash</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>All models</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>1 image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{count} images</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>HistoryPanel</name>
    <message>
        <source>Select an image to see how it was made.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Details…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reuse all parameters</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reuse seed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Send to canvas</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Upscale…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open file</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Show in folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Copy image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Export…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Export without metadata…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Favourite</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Move to trash</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Restore</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Empty trash…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>More</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>This image does not say how it was made.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{path} is missing: it was moved or deleted outside Marble.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot read {path}.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Moved 1 image to the trash; tick Trash to restore.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Moved {count} images to the trash; tick Trash to restore.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Deleted 1 image for good.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Deleted {count} images for good.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>1 image is no longer in the image folder; its record is kept and marked missing.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{count} images are no longer in the image folder; their records are kept and marked missing.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Export image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>PNG images (*.png)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Export {count} images</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Exported {count} image(s) to {folder}.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>JobStatus</name>
    <message>
        <source>Ready</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{state} · {queued} queued</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Starting…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Running, seed {seed}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Loading {model}…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Model ready</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Loaded {model} in {seconds:.1f} s</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Compiling the model (first fast-mode image)…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Preparing live previews for this model (once)…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Rewriting the prompt (FLUX.3&apos;s prompt rewriter)…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Saved {index}/{total}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>1 image is kept in memory: use File &gt; Save unsaved images… to put it in another folder.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{count} images are kept in memory: use File &gt; Save unsaved images… to put them in another folder.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Done: 1 image in {seconds:.1f} s</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Done: {count} images in {seconds:.1f} s</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Failed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cancelled</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>LayoutBoxesEditor</name>
    <message>
        <source>Drag in the frame to place an element of the picture, then describe it in the list; click a box to select it, drag the selected box to move it or its corners to resize it</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Drag around the element on the reference picture; the rewriter moves it to its box in the frame above</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>What it holds</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>From</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Where</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove the selected box</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clear</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove every box</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Drag in the frame to place an element; the rewriter writes the caption around the boxes.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>New</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reference {number}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>New content, or an element of a reference picture moved to the box</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reference {number}: mark the element to move (drag around it from outside the box, or move the box and drag its corners)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reference {number} is not listed: add it under References, or choose another</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>LibraryDialog</name>
    <message>
        <source>Models</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>LoRAs</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Embeddings</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>VAEs</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Controls</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Upscalers</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Text encoders</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Name</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Architecture</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>AutoV2</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Library</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Select an entry to see its hashes and the metadata in its header.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Import…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Convert pickle and import</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Load only the tensors of the pickled file (weights_only) in a separate process and save them as .safetensors. A file that needs anything more is rejected.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cancel import</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Remove</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Re&amp;name…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Show in &amp;folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Variant…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Say which model this file is where its tensors cannot: a Qwen-Image or LongCat-Image file that is their Edit model, a Krea 2 or ERNIE-Image file that is Turbo (ComfyUI&apos;s repackaged files do not say), an ERNIE-Image Turbo folder, a PixArt file in diffusers&apos; names that is PixArt-α 512, or an SD 1.x / SDXL model that is a few-step one (Lightning, Turbo ...).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Few-step kind…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Say which few-step LoRA this file is where its header does not (an LCM-LoRA as its makers publish it names nothing): picking it in the LoRA list then brings that kind&apos;s steps, CFG and sampler.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Close</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Import into {kind}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Weights (*.safetensors *.ckpt *.pt *.pth *.bin *.sft *.gguf *.onnx);;All files (*)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Another import is still running; wait for it or cancel it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Importing {name}…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove from the library</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Delete {name} ({file}) from the library folder? This cannot be undone.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Rename</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>New name:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Model variant</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Run {name} as:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>As its header says ({kind})</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Not a few-step LoRA</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Few-step kind</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{name} is:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{architecture}, {kind} few-step</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{kind} ({count})</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Name: {name}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>File: {file}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Architecture: {architecture}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Format: {format}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Size: {size}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>SHA-256: {hash}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>AutoV2: {hash}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>AutoV3: {hash}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Source: {source}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Imported: {date}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Header metadata:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Imported {name} ({architecture}).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Import cancelled; nothing was added.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>LibraryIntegration</name>
    <message>
        <source>&amp;Library…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Importing {name}…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Imported {name} into the library ({architecture}).</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>LoraListWidget</name>
    <message>
        <source>Add LoRA</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Apply a LoRA from the library (or type &lt;lora:name:weight&gt; in the prompt)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No LoRAs in the library yet: import some with File ▸ Library…</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>MainWindow</name>
    <message>
        <source>Marble Studio</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cancelling…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>History</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open image as source</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Images (*.png *.jpg *.jpeg *.webp)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Save unsaved images in</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{error} The images are still kept: try another folder.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Saved {count} image(s) in {folder}.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reference images no longer there, left out: {files}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot open {path}: the file is missing or not an image.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>MaskCanvas</name>
    <message>
        <source>Undo</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Redo</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>MaskLayer</name>
    <message>
        <source>Erase</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Brush stroke</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Invert mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clear mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Fill mask</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Load mask</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>MessageBar</name>
    <message>
        <source>Dismiss</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ParameterPanel</name>
    <message>
        <source>Same as the first pass</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Auto</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CPU</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CUDA (NVIDIA)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Apple (MPS)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>fp32 (full)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>fp16 (half)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>bf16</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Full (fastest)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Tiled VAE + sliced attention</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CPU offload (least VRAM)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Group offload (Flux, SD3)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Sequential offload (Flux, SD3; slowest)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>fp8 layer-wise casting (Flux, SD3)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>NF4 4-bit (Flux, SD3, Qwen, Z-Image; CUDA)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>int8 8-bit (Flux, SD3, Qwen, Z-Image; CUDA)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Original</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No norm</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>None</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No models found</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Scan the models folder again</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open models folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Model default</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The guidance Flux dev was distilled with (3.5 by default)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Distilled C&amp;FG</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Rewrite the prompt with FLUX.3&apos;s prompt rewriter</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Expands a short prompt into the detailed caption FLUX.3 is trained on, before the first step (text to image, from the reference pictures when there are some). The caption is the prompt the image records, so a recipe makes the same image again without the rewriter. Its folder is set in Settings (FLUX.3 prompt rewriter).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Layout boxes</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Where FLUX.3&apos;s prompt rewriter places elements of the picture: its caption cites each box and ends with their table, which FLUX.3 was trained to follow</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>For a few-step model or LoRA: sets the steps, CFG and sampler its makers recommend</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>An SDXL refiner model that finishes the last steps</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Fraction of the steps the base model runs before the refiner</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Refi&amp;ner</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>switch at</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Text encoders</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Re&amp;ferences</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Random seed for every job</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reuse the seed of the last job</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Pipeline runs, one after another</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Images per run (needs more memory)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Swap width and height</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Presets…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clip skip: read the prompt from this many layers before the text encoder&apos;s last (1: the last). Many anime models are made for 2.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>How (word:1.2) weights apply. Original: as AUTOMATIC1111 (weights, then the mean restored); No norm: weights only; None: brackets, weights and BREAK are plain text.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Needs the optional bitsandbytes package, which this installation lacks.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Needs an NVIDIA GPU with CUDA, which this computer lacks.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Auto: everything on the GPU when it fits, VAE tiling above 1024×1024, CPU offload when VRAM is short. After running out of memory Marble retries once a step lower and says so.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Compile the UNet (GPU)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Fast mode: channels_last and torch.compile. The first image after loading takes a minute or more to compile; later ones run faster. Switching it reloads the model.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Extra</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Variation seed: its noise is mixed into the seed&apos;s by the strength; empty (Random) draws one per job</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>0: the seed&apos;s image; 1: the variation seed&apos;s image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Seamless tiling</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The image wraps: its left edge continues its right, its top its bottom</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Variation seed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>strength</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Resize seed from</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Hires fix</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Upscale and denoise again</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Text-to-image only: the image is made at the size above, upscaled, then refined by an image-to-image pass at the larger size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Latent modes upscale the latents (fast, needs denoising 0.5 or more); Lanczos and upscaler models upscale the pixels</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Resize to this size instead of upscaling by a factor (Off: by the factor)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Same as steps</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Same as the prompt</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Same as the negative prompt</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Upscaler</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Upscale by</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Resize to</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Hires steps</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Denoising</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Hires sampler</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Hires prompt</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Hires negative</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The VAE turns the finished latent into pixels. Automatic: the model&apos;s own. A library VAE (marble vaes import, or drop one on the window) fixes washed-out colours of some models.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clip s&amp;kip</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Emp&amp;hasis</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>S&amp;ampler</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Steps</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;CFG scale</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Few-ste&amp;p</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>S&amp;eed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Width</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Height</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Si&amp;ze</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Batch count</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Batch s&amp;ize</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Device</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Precisi&amp;on</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Memor&amp;y</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Fas&amp;t mode</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;LoRAs</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;VAE</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Co&amp;ntrol units</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No models yet. Put .safetensors files or diffusers folders in:
{folder}
then press ⟳.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Not in the VAE library</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Not in the models folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Control units work with Stable Diffusion, SD3, Flux.1, Qwen-Image and Z-Image models, not the chosen one</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Stable Diffusion 1.x, 2.x and SDXL models only: the chosen model is a diffusion transformer</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reuse the seed of the last job ({seed})</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Off</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Draw the seed&apos;s noise at this size and centre it: keeps a seed&apos;s look at a new size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>LCM</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Turbo</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Lightning</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Hyper-SD</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>DMD2</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Automatic (the model&apos;s own)</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>PlotDialog</name>
    <message>
        <source>X/Y/Z plot</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>1,2,3 or 10-30 (+10) or 1-2 [5]</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Comma-separated values, or ranges. For Prompt S/R, the first value is the text replaced in the prompt.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{axis} axis</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Queue</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Queue one job per cell; the grid is made when the last is done</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Seed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Steps</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CFG scale</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Sampler</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Width</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Height</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Size (WxH)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Clip skip</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Denoising strength</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Prompt S/R</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Distilled CFG scale</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Variation seed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Variation strength</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>LoRA weight: {name}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>(none)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>X axis: type the values to try.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{axis} axis: {problem}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>1 cell</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{count} cells ({shape})</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>PlotIntegration</name>
    <message>
        <source>X/Y/Z &amp;plot…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Plot queued: {count} jobs; the grid follows the last one.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>a cell&apos;s image could not be saved</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>cancelled</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The plot stopped ({reason}): no grid was made.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The plot&apos;s images are saved, but not its grid: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Plot grid saved: {path}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>PngInfoDialog</name>
    <message>
        <source>PNG info</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Using all parameters changes:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Use &amp;all parameters</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Use &amp;prompt only</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Use as &amp;source image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Use as &amp;control image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Add a control unit with this image (Control units in the panel)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{image}: {format}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Nothing: the settings match.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>PromptEditor</name>
    <message>
        <source>Describe the image: a marble statue of a cat, soft light</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Tokens used / what the prompt&apos;s chunks hold. The text encoder reads {chunk} tokens at a time; a longer prompt (or BREAK) starts another chunk of {chunk}, encoded on its own and joined, as in AUTOMATIC1111.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CLIP tokens / the {chunk} this model&apos;s CLIP encoder reads: it takes no further chunks. Its T5 encoder reads the whole prompt, up to {limit} of its own tokens; the job says if the prompt is longer.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>What to avoid: blurry, low quality</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Prompt</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Negative prompt</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Saved styles added to the prompts when you generate (`marble styles import styles.csv` imports A1111&apos;s)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{prompt}
Negative: {negative}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Styles ({count})</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Styles</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>QueuePanel</name>
    <message>
        <source>Generate</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Generate (Ctrl+Enter)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cancel</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cancel the running job (Esc)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Idle</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Ready</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>step {step}/{total}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{progress} · batch {index}/{count}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>RecipeIntegration</name>
    <message>
        <source>&amp;Open image…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Images (*.png *.jpg *.jpeg *.webp)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Pasted image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No control unit added: import a control model first, or remove a unit.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>RecoveryBar</name>
    <message>
        <source>Run again</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Dismiss</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>1 job did not finish last time (1 image to make).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>1 job did not finish last time ({images} images to make).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{jobs} jobs did not finish last time ({images} images to make).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot run {job} again: {error}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ReferenceImagesRow</name>
    <message>
        <source>Pictures the prompt can refer to, in order (Picture 2, Picture 3, …)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Add…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Add reference images (or drop image files on this row)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove the selected reference image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reference images</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Images (*.png *.jpg *.jpeg *.webp *.bmp)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>This model reads at most {count} reference images.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ResultStrip</name>
    <message>
        <source>Seed {seed}
{path}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>SeedEdit</name>
    <message>
        <source>Random</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Empty (Random) draws a new seed for every job; up to 18446744073709551615</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>ServeApiIntegration</name>
    <message>
        <source>Serve &amp;API</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Answer A1111&apos;s HTTP API on this machine (127.0.0.1); its jobs join this queue.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot serve the API on {host}:{port}: {reason}. Another program (or another Marble) may use that port: choose another API port in Settings.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>API serving on {url}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>API stopped.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>SessionMemory</name>
    <message>
        <source>Reference images no longer there, left out: {files}</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>Settings</name>
    <message>
        <source>Theme</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Dark keeps the colours of your images the brightest thing on screen; Follow the system uses your desktop&apos;s light or dark palette.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Dark</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Light</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Follow the system</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Live preview</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Show the picture taking shape every N denoising steps (Off: no previews, a little faster). Takes effect at the next start.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Off</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Memory mode</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The memory mode new jobs start with: Auto picks one for your GPU; Tiled and Offload use less graphics memory and run slower.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Auto</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Full</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Tiled</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Offload</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Group</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Sequential</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>fp8</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>NF4</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Int8</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Device</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Where new jobs run: Auto uses the GPU when there is one.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CPU</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CUDA (NVIDIA)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Apple GPU</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Output folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Where new images are saved; empty: the app&apos;s own outputs folder. Takes effect at the next start.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Models folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>A folder of models to use instead of the app&apos;s own; empty: the app&apos;s own models folder. Takes effect at the next start.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>CPU threads</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Threads a job on the CPU uses. Auto: the cores other programs leave free when the job starts (a busy machine slows a job several-fold when both compete for every core). Takes effect at the next start.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Tokenizer folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>For a Qwen-Image, Z-Image or Flux.2 file run with a text encoder from the library: a folder holding the tokenizer to use instead of Marble&apos;s own Qwen tokenizer (tokenizer.json and tokenizer_config.json; the model&apos;s diffusers folder serves), and for a Flux.2 dev Mistral file that carries none, Mistral&apos;s; for a Lumina Image 2.0 file run with a Gemma-2 file, Gemma&apos;s (it cannot ship: needed); empty: Marble&apos;s own. Takes effect at the next start.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>FLUX.3 prompt rewriter</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>(none)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The folder of FLUX.3&apos;s prompt rewriter (flux-3-image-klein-pup: its weights, tokenizer and system_prompts.json), which Rewrite prompt runs to expand a short prompt into the detailed caption FLUX.3 is trained on; empty: none. Takes effect at the next start.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>API port</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The port File ▸ Serve API listens on, on this machine only (127.0.0.1). Any free port: one is picked each time.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Any free port</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>C2PA signing</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Sign every new image with a C2PA manifest (Content Credentials) naming Marble and the model, with your own key (Create signing key, below).</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>SettingsDialog</name>
    <message>
        <source>Settings</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>{title}:</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>SettingsIntegration</name>
    <message>
        <source>&amp;Settings…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open &amp;log folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Edit</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Help</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Replace signing key</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Create signing key</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>A new signing key is in {folder}. Images are signed with it once C2PA signing is on (press OK).</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>SideSpinBox</name>
    <message>
        <source> px</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>TextEncoderRow</name>
    <message>
        <source>A diffusers folder of the same family, or library encoders</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>This model file holds the transformer only: its text encoders and VAE come from a diffusers folder of the same family (for Chroma, a Chroma or Flux.1 folder), or from text encoders in the library (CLIP and T5 files for Flux, SD3 and Chroma, the T5 file alone for PixArt; a Qwen file for Qwen-Image, LongCat-Image, Z-Image, Ovis-Image and Flux.2 Klein; a Qwen3-VL 4B file for Krea 2 and FLUX.3, Qwen3-VL 8B (with its vision tower) for Qwen-Image 2.1, whose VAE is its folder&apos;s vae file; ComfyUI&apos;s Mistral file for Flux.2 dev and its Ministral 3 3B file for ERNIE-Image; a Gemma-2 file for Lumina Image 2.0 and Sana (with Sana&apos;s DC-AE in the VAE row), the Long-CLIP L and G, T5 and Llama 3.1 files for HiDream-I1 and a Pile-T5-XL file for AuraFlow and Pony V7, whose tokenizers come from the Tokenizer folder setting: pick them with Library, and the VAE in the VAE row). For Qwen-Image 2.1 a folder is its diffusers folder, or one holding text_encoder/, processor/ and vae/</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Choose the folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Library</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Text encoders from the library (marble encoders import FILE)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Text encoders and VAE folder</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>UpscaleDialog</name>
    <message>
        <source>Upscale</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Whole image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>An upscaler model runs in tiles of this many source pixels, so big images fit in memory.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Upscaler</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Scale</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Upscaler tile</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>SD upscale: denoise the result again, tile by tile</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Image-to-image over overlapping tiles with the image&apos;s own prompt, seed and model (else the current ones), blended so no seam shows.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Denoising strength</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Tile size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Tile overlap</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>UpscaleIntegration</name>
    <message>
        <source>&amp;Upscale canvas image…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>The canvas has no image to upscale.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>WindowActions</name>
    <message>
        <source>&amp;Generate</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Cancel</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cancel &amp;all</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Refresh models</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open &amp;models folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open &amp;outputs folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Save &amp;unsaved images…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Open image as &amp;source…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Paste image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Quit</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Fit to window</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;Actual size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;File</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>&amp;View</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>_ControlRow</name>
    <message>
        <source>The control model (ControlNet or T2I-Adapter) from the library</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove this control unit</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>File…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Choose the control image from a file</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Canvas</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Use the picture on the canvas as the control image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Draw</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Draw the control image by hand on the canvas (white on black)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Edit</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Touch up the preprocessed image by hand on the canvas; it is then used as it is</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>How the image becomes the control image before generating</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Control weight: 0 turns it off, 1 is full strength</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Start: the fraction of the steps where control begins</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>End: the fraction of the steps where control ends</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Add image…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Add further reference images: the IP-Adapter averages what it reads from each</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove the last added reference image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Weight</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Start</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>End</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Not in the control library</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Built-in (the model&apos;s control input)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Canvas drawing</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No image yet</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Reference images: {count}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>No image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Cannot read the image</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Previewed at generation: shown unprocessed</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>_FolderField</name>
    <message>
        <source>(the app&apos;s own folder)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Browse…</source>
        <translation type="unfinished"></translation>
    </message>
</context>
<context>
    <name>_LoraRow</name>
    <message>
        <source>LoRA weight: 0 turns it off, 1 is full strength</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Remove this LoRA</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <source>Not in the LoRA library</source>
        <translation type="unfinished"></translation>
    </message>
</context>
</TS>
