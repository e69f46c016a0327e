"""Deployments: a vLLM server's life on this machine, in four rooms read in order, and three verbs.

::

    record/      what a deployment is, on disk and in the process table   (imports nothing above it)
      state        the State enum (starting .. ready, stale, failed, ...)
      names        the name rule, and the one map from a name to its files inside the home
      store        the record (Deployment) and the one store: update() under a lock, atomic saves
      identity     which processes are ours: leader pid + start time, recorded members, the mark
      logs         what a vLLM log says: start phase, failure reason, KV capacity
      phase        "what phase is this server in": /health, /metrics, live_state, the one wait
      reports      what a multi-node deployment's nodes last reported (beside the record)
    launch/      starting one: options -> vLLM argv -> spawn -> ready     (imports record)
      options      ServeOptions (the typed options every launch is built from), ServePlan
      argv         plan_serve: options -> the exact argv and environment (pure)
      spawn        launch / relaunch as a new process group, record it, wait until ready
      vllm_cli     vLLM's own CLI entry for every vLLM distribution (runs in the engine)
    supervise/   staying up                                                (imports record, launch)
      policy       RestartPolicy, Monitor, decide (pure: who decides a restart)
      supervisor   the loop that observes and relaunches; follow() through restarts
      service      the systemd unit that runs `dsagent up --foreground`
    nodes/       spanning nodes                                            (imports record, launch)
      join         what a node runs: checks against the head, then its headless engine
      watch        the watcher beside each node's engine (and the head's roll call holder)
      rollcall     the head's listener for the nodes' reports
      ray          --backend ray: attach to the user's Ray cluster; rayprobe runs inside it
    up           the verb: estimate -> fetch -> launch (-> supervise | nodes); attach
    status       status and ps: the report of a deployment, the lookup, orphans
    stop         stop: end what is proven ours; remove a stale record

Where is a record written? ``record.store.update`` (and ``create`` for a new launch), nowhere
else. Who decides a restart? ``supervise.policy.decide``. What does a node run? ``nodes.join``.
Which processes may be signalled? ``record.identity.processes_of``. Imports run downward:
``record`` <- ``launch`` <- ``supervise``, ``nodes`` <- the verbs. Below all of them: ``errors``,
``settings``, ``files``, ``system``, ``plan``, ``weights``.
"""
