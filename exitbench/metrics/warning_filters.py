"""One lock for changing the process's warning filters.

``warnings.catch_warnings`` saves and restores the filter list of the whole process, not of a thread: two
threads doing it at once (a GPU actor runs two calls at once) can drop each other's filters, or leave one
in place for good. Code that changes the filters holds this lock around the change and what it covers."""

import threading

WARNING_FILTERS = threading.Lock()
