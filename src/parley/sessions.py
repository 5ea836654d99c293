"""Django's database sessions, with the read every logged-in request makes written out in SQL.

`SESSION_ENGINE = "parley.sessions"`. Same table, same data, same expiry rule as
`django.contrib.sessions.backends.db` (which this subclasses for everything else): only the
lookup skips the ORM, whose query building cost a page ~0.3 ms of CPU, more than the query.
"""

from __future__ import annotations

from django.contrib.sessions.backends import db
from django.db import connections, router
from django.utils import timezone


class SessionStore(db.SessionStore):
    def _get_session_from_db(self):
        model = self.model
        using = router.db_for_read(model)
        connection = connections[using]
        now = model._meta.get_field("expire_date").get_db_prep_value(timezone.now(), connection)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT session_data FROM django_session "
                "WHERE session_key = %s AND expire_date > %s",
                [self.session_key, now],
            )
            row = cursor.fetchone()
        if row is None:
            self._session_key = None  # as Django's: no such (live) session
            return None
        # expire_date is left deferred: loading a session reads only its data.
        return model.from_db(using, ["session_key", "session_data"], [self.session_key, row[0]])
