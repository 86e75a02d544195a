# -*- coding: utf-8 -*-
"""ars_events -- Ansible stdout callback that also streams JSON events.

Human output: identical to the builtin ``default`` stdout callback (this
plugin subclasses it and only observes what it displays).

Event stream (the contract with the Rust side):

* Enabled when the env var ``ARS_EVENTS_FD`` holds the number of a file
  descriptor that is open for writing in the ``ansible-playbook`` process
  (e.g. the write end of a pipe passed by the parent). If it is unset or
  unusable, no events are written and the plugin is just the default callback.
* One JSON object per line (UTF-8, actually pure ASCII: ``ensure_ascii``),
  ``\\n``-terminated, flushed after every line. Keys, always all present:

  ``event``      str  ansible-runner/AWX event name: playbook_on_start,
                      playbook_on_play_start, playbook_on_task_start,
                      playbook_on_handler_task_start, playbook_on_include,
                      playbook_on_notify, playbook_on_vars_prompt,
                      playbook_on_no_hosts_matched,
                      playbook_on_no_hosts_remaining, runner_on_start,
                      runner_on_ok, runner_on_failed, runner_on_skipped,
                      runner_on_unreachable, runner_item_on_ok,
                      runner_item_on_failed, runner_item_on_skipped,
                      runner_retry, runner_on_file_diff,
                      runner_on_async_poll, runner_on_async_ok,
                      runner_on_async_failed, verbose (any text displayed
                      outside a callback event: warnings, -v output, ...),
                      playbook_on_stats (last; written after the recap is
                      printed). Consumers should tolerate unknown names.
  ``time``       str  RFC3339 UTC with microseconds, "2026-11-29T02:50:01.123456Z"
  ``host``       str  host name, or ""
  ``task``       str  task name, or ""
  ``play``       str  play name, or ""
  ``stdout``     str  exact text the default callback wrote to stdout for
                      this event (newlines included; colour codes only when
                      colour is on), "" if nothing. Concatenating the stdout
                      of all events gives the process stdout from the first
                      event on.
  ``event_data`` obj  details, by event:
      playbook_on_start:  {"playbook": basename, "playbook_path": path}
      playbook_on_play_start: {"play", "play_uuid", "play_pattern"}
      playbook_on_*task_start: {"task", "task_uuid", "task_action",
                          "task_path", "is_conditional", "is_handler"}
      runner_on_start:    {"host", "task_uuid", "task_action"}
      runner_*:           {"host", "res": result dict (keys "_ansible_*"
                          removed; {"censored": "..."} when no_log),
                          "changed": bool, "task_action", "task_uuid",
                          "task_path"; failed: "ignore_errors";
                          item events: "item" label}
      playbook_on_include: {"included_file", "hosts": [..]}
      playbook_on_stats:  {"ok"|"changed"|"failures"|"dark"|"skipped"|
                          "rescued"|"ignored"|"processed": {host: int},
                          "custom": {...}}
      any event:          "stderr": text the callback wrote to stderr for
                          this event (only present when non-empty).

Never raises because of the event stream; a closed pipe just stops events.
Depends on nothing but ansible-core and the Python standard library.
"""

from __future__ import annotations

DOCUMENTATION = """
    name: ars_events
    type: stdout
    short_description: default output plus a JSON-lines event stream on ARS_EVENTS_FD
    description:
        - Same screen output as the default callback.
        - Writes one JSON object per event to the file descriptor named by the env var ARS_EVENTS_FD.
    extends_documentation_fragment:
      - default_callback
      - result_format_callback
    requirements:
      - set as stdout in configuration
"""

import datetime
import json
import math
import os
import threading
from collections.abc import Mapping

from ansible import constants as C
from ansible.plugins.callback.default import CallbackModule as DefaultCallback

try:
    from ansible.utils.color import stringc as _stringc
except Exception:  # pragma: no cover - very old/new ansible
    _stringc = None

_CENSORED = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"
_MAX_DEPTH = 64

# The callback instance currently owning the Display hook (one per process).
_ACTIVE = None


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def _jsonable(obj, strip_private=False, depth=0):
    """Return a structure json.dumps accepts (str keys, finite floats)."""
    if depth > _MAX_DEPTH:
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        # str/int subclasses (e.g. tagged values) -> plain types
        if isinstance(obj, bool) or obj is None:
            return obj
        return str(obj) if isinstance(obj, str) else int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            k = k if isinstance(k, str) else str(k)
            if strip_private and k.startswith('_ansible_'):
                continue
            out[str(k)] = _jsonable(v, strip_private, depth + 1)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v, strip_private, depth + 1) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode('utf-8', errors='replace')
    try:
        return str(obj)
    except Exception:
        return repr(obj)


def _result_dict(result):
    res = getattr(result, 'result', None)
    if not isinstance(res, Mapping):
        res = getattr(result, '_result', None)
    return res if isinstance(res, Mapping) else {}


def _task_name(task):
    try:
        return task.get_name().strip() if task is not None else ''
    except Exception:
        return ''


def _host_name(host):
    if host is None:
        return ''
    try:
        return host.get_name()
    except Exception:
        return str(host)


class CallbackModule(DefaultCallback):

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'ars_events'

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._ars_pid = os.getpid()
        self._ars_tls = threading.local()
        self._ars_lock = threading.Lock()
        self._ars_out = None
        self._ars_play = ''
        self._ars_task = ''
        fd = os.environ.get('ARS_EVENTS_FD')
        if fd not in (None, ''):
            try:
                self._ars_out = os.fdopen(int(fd), 'w', buffering=1, encoding='utf-8', errors='replace')
            except Exception as e:
                self._ars_out = None
                try:
                    self._display.warning('ars_events: cannot open ARS_EVENTS_FD=%s: %s' % (fd, e))
                except Exception:
                    pass
        if self._ars_out is not None:
            self._ars_hook_display()

    # ------------------------------------------------------------------ output

    def _ars_hook_display(self):
        global _ACTIVE
        _ACTIVE = self
        disp = self._display
        if getattr(disp, '_ars_hooked', False):
            return
        orig = disp.display

        def display(msg, *args, **kwargs):
            orig(msg, *args, **kwargs)
            cb = _ACTIVE
            if cb is not None:
                try:
                    cb._ars_on_display(disp, msg, args, kwargs)
                except Exception:
                    pass

        disp.display = display
        disp._ars_hooked = True

    def _ars_on_display(self, disp, msg, args, kwargs):
        # Workers (forked) proxy display() over a queue to the main process,
        # where it is displayed (and seen by us) again: ignore it here.
        if os.getpid() != self._ars_pid or getattr(disp, '_final_q', None):
            return
        names = ('color', 'stderr', 'screen_only', 'log_only', 'newline', 'caplevel')
        opts = dict(zip(names, args))
        opts.update(kwargs)
        if opts.get('log_only') or not isinstance(msg, str):
            return
        # Mirror Display.display() exactly.
        msg = msg.replace('\r\n', '\n')
        has_newline = msg.endswith('\n')
        text = msg[:-1] if has_newline else msg
        color = opts.get('color')
        if color and _stringc is not None:
            text = _stringc(text, color)
        if has_newline or opts.get('newline', True):
            text += '\n'
        stream = 'err' if opts.get('stderr') else 'out'
        buf = getattr(self._ars_tls, 'buf', None)
        if buf is not None:
            buf[stream].append(text)
        else:
            data = {'stderr': text} if stream == 'err' else {}
            self._ars_emit('verbose', text if stream == 'out' else '', data)

    def _ars_emit(self, event, stdout='', event_data=None, host='', task=None, play=None, stderr=''):
        if self._ars_out is None or os.getpid() != self._ars_pid:
            return
        try:
            data = _jsonable(event_data or {})
            if stderr:
                data['stderr'] = stderr
            line = json.dumps({
                'event': event,
                'time': _now(),
                'host': host or '',
                'task': self._ars_task if task is None else task,
                'play': self._ars_play if play is None else play,
                'stdout': stdout or '',
                'event_data': data,
            }, ensure_ascii=True, default=str)
            with self._ars_lock:
                self._ars_out.write(line + '\n')
                self._ars_out.flush()
        except Exception:
            # Broken pipe or anything else: stop the stream, keep the run going.
            out, self._ars_out = self._ars_out, None
            try:
                out.close()
            except Exception:
                pass

    def _ars_run(self, event, method, args, event_data=None, host='', task=None, play=None, before=None):
        """Call the default callback's method, capturing what it displays, then emit."""
        if self._ars_out is None:
            return getattr(super(CallbackModule, self), method)(*args)
        buf = {'out': [], 'err': []}
        prev = getattr(self._ars_tls, 'buf', None)
        self._ars_tls.buf = buf
        try:
            return getattr(super(CallbackModule, self), method)(*args)
        finally:
            self._ars_tls.buf = prev
            try:
                if callable(event_data):
                    event_data = event_data()
            except Exception:
                event_data = {}
            self._ars_emit(event, ''.join(buf['out']), event_data, host=host, task=task,
                           play=play, stderr=''.join(buf['err']))

    # ------------------------------------------------------------------ helpers

    def _ars_task_data(self, task):
        data = {'task': _task_name(task)}
        for key, fn in (('task_uuid', lambda: task._uuid), ('task_action', lambda: task.action),
                        ('task_path', lambda: task.get_path())):
            try:
                data[key] = fn()
            except Exception:
                data[key] = ''
        return data

    def _ars_result_data(self, result, item=False):
        """Snapshot the result now: the default callback mutates it while printing."""
        if self._ars_out is None:
            return {}
        try:
            raw = _result_dict(result)
            task = getattr(result, 'task', None) or getattr(result, '_task', None)
            no_log = bool(raw.get('_ansible_no_log')) or 'censored' in raw
            if no_log:
                res = {'censored': raw.get('censored', _CENSORED)}
            else:
                res = _jsonable(raw, strip_private=True)
            try:
                changed = bool(result.is_changed())
            except Exception:
                changed = bool(raw.get('changed', False))
            data = {
                'host': _host_name(getattr(result, 'host', None) or getattr(result, '_host', None)),
                'res': res,
                'changed': changed,
            }
            td = self._ars_task_data(task)
            data.update(task_action=td['task_action'], task_uuid=td['task_uuid'], task_path=td['task_path'])
            if item:
                try:
                    data['item'] = _jsonable(self._get_item_label(raw)) if not no_log else '(censored due to no_log)'
                except Exception:
                    data['item'] = ''
            return data
        except Exception:
            return {}

    def _ars_runner(self, event, method, result, *extra, item=False, extra_data=None):
        data = self._ars_result_data(result, item=item)
        if extra_data:
            data.update(extra_data)
        task = getattr(result, 'task', None) or getattr(result, '_task', None)
        return self._ars_run(event, method, (result,) + extra, data,
                             host=_host_name(getattr(result, 'host', None) or getattr(result, '_host', None)),
                             task=_task_name(task))

    # ------------------------------------------------------------------ playbook events

    def v2_playbook_on_start(self, playbook):
        path = getattr(playbook, '_file_name', '') or ''
        self._ars_play = ''
        self._ars_task = ''
        return self._ars_run('playbook_on_start', 'v2_playbook_on_start', (playbook,),
                             {'playbook': os.path.basename(path), 'playbook_path': path})

    def v2_playbook_on_play_start(self, play):
        try:
            self._ars_play = play.get_name().strip()
        except Exception:
            self._ars_play = ''
        self._ars_task = ''

        def data():
            hosts = getattr(play, 'hosts', '')
            if isinstance(hosts, (list, tuple)):
                hosts = ', '.join(str(h) for h in hosts)
            return {'play': self._ars_play, 'play_uuid': getattr(play, '_uuid', ''), 'play_pattern': hosts}
        return self._ars_run('playbook_on_play_start', 'v2_playbook_on_play_start', (play,), data)

    def _ars_task_start(self, event, method, args, task, handler):
        self._ars_task = _task_name(task)
        data = self._ars_task_data(task) if self._ars_out is not None else {}
        if self._ars_out is not None:
            data['is_handler'] = handler
            data['is_conditional'] = bool(args[1]) if len(args) > 1 else False
        return self._ars_run(event, method, args, data)

    def v2_playbook_on_task_start(self, task, is_conditional):
        return self._ars_task_start('playbook_on_task_start', 'v2_playbook_on_task_start',
                                    (task, is_conditional), task, False)

    def v2_playbook_on_handler_task_start(self, task):
        return self._ars_task_start('playbook_on_handler_task_start', 'v2_playbook_on_handler_task_start',
                                    (task,), task, True)

    def v2_playbook_on_include(self, included_file):
        def data():
            return {'included_file': getattr(included_file, '_filename', ''),
                    'hosts': [_host_name(h) for h in getattr(included_file, '_hosts', [])]}
        return self._ars_run('playbook_on_include', 'v2_playbook_on_include', (included_file,), data)

    def v2_playbook_on_notify(self, handler, host):
        return self._ars_run('playbook_on_notify', 'v2_playbook_on_notify', (handler, host),
                             lambda: {'handler': _task_name(handler), 'host': _host_name(host)},
                             host=_host_name(host))

    def v2_playbook_on_vars_prompt(self, *args, **kwargs):
        # Not displayed by the default callback; kept for completeness.
        self._ars_emit('playbook_on_vars_prompt', '', {'varname': args[0] if args else kwargs.get('varname', '')})
        return super(CallbackModule, self).v2_playbook_on_vars_prompt(*args, **kwargs)

    def v2_playbook_on_no_hosts_matched(self):
        return self._ars_run('playbook_on_no_hosts_matched', 'v2_playbook_on_no_hosts_matched', (), {})

    def v2_playbook_on_no_hosts_remaining(self):
        return self._ars_run('playbook_on_no_hosts_remaining', 'v2_playbook_on_no_hosts_remaining', (), {})

    def v2_playbook_on_stats(self, stats):
        def data():
            out = {}
            for key in ('ok', 'changed', 'failures', 'dark', 'skipped', 'rescued', 'ignored', 'processed', 'custom'):
                val = getattr(stats, key, None) or {}
                out[key] = dict(val) if isinstance(val, Mapping) else {}
            # processed is {host: 1}; keep counts as ints
            return out
        return self._ars_run('playbook_on_stats', 'v2_playbook_on_stats', (stats,), data, task='', play='')

    # ------------------------------------------------------------------ runner events

    def v2_runner_on_start(self, host, task):
        data = {}
        if self._ars_out is not None:
            td = self._ars_task_data(task)
            data = {'host': _host_name(host), 'task_uuid': td['task_uuid'], 'task_action': td['task_action']}
        return self._ars_run('runner_on_start', 'v2_runner_on_start', (host, task), data,
                             host=_host_name(host), task=_task_name(task))

    def v2_runner_on_ok(self, result):
        return self._ars_runner('runner_on_ok', 'v2_runner_on_ok', result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        return self._ars_runner('runner_on_failed', 'v2_runner_on_failed', result, ignore_errors,
                                extra_data={'ignore_errors': bool(ignore_errors)})

    def v2_runner_on_skipped(self, result):
        return self._ars_runner('runner_on_skipped', 'v2_runner_on_skipped', result)

    def v2_runner_on_unreachable(self, result):
        return self._ars_runner('runner_on_unreachable', 'v2_runner_on_unreachable', result)

    def v2_runner_item_on_ok(self, result):
        return self._ars_runner('runner_item_on_ok', 'v2_runner_item_on_ok', result, item=True)

    def v2_runner_item_on_failed(self, result):
        return self._ars_runner('runner_item_on_failed', 'v2_runner_item_on_failed', result, item=True)

    def v2_runner_item_on_skipped(self, result):
        return self._ars_runner('runner_item_on_skipped', 'v2_runner_item_on_skipped', result, item=True)

    def v2_runner_retry(self, result):
        return self._ars_runner('runner_retry', 'v2_runner_retry', result)

    def v2_on_file_diff(self, result):
        return self._ars_runner('runner_on_file_diff', 'v2_on_file_diff', result)

    def v2_runner_on_async_poll(self, result):
        return self._ars_runner('runner_on_async_poll', 'v2_runner_on_async_poll', result)

    def v2_runner_on_async_ok(self, result):
        return self._ars_runner('runner_on_async_ok', 'v2_runner_on_async_ok', result)

    def v2_runner_on_async_failed(self, result):
        return self._ars_runner('runner_on_async_failed', 'v2_runner_on_async_failed', result)
