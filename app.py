"""corea's browser demo: `python app.py` serves it on http://127.0.0.1:7860.

Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose another address (Spaces set them).
"""

from corea.ui import build_demo

demo = build_demo()

if __name__ == "__main__":
    demo.launch(max_file_size="20mb", show_error=True)
