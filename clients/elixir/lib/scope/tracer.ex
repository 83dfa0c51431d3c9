defmodule Scope.Tracer do
  @moduledoc """
  Trace a running node straight into a Scope cluster: a thin wrapper of the
  Erlang client `:scope_tracer` (clients/erlang).

      {:ok, _pid} = Scope.Tracer.start(endpoint: "http://127.0.0.1:7070",
                                       procs: [MyApp.Server], modules: [MyApp.Worker])
      # ... exercise the system ...
      {:ok, stats} = Scope.Tracer.stop()

  Options are those of `:scope_tracer.start/1` as a keyword list (or map):
  `endpoint` (a URL or a list of URLs of cluster nodes), `token`,
  `cacertfile`, `procs` (`:new`, `:all` or a list of pids and registered
  names), `modules`, `match` (`:exception_trace` or `:return_trace`),
  `batch`, `flush_ms`, `max_queue`, `max_rate`, `max_mailbox`,
  `durability` (`:committed` or `:accepted`), `stop_timeout`, and `file`
  instead of `endpoint` for the offline mode. See docs/ERLANG.md.

  Stats: `traced`, `sent`, `retried`, `acked`, `dropped`, `refused`,
  `queued`, `skipped`, `stopped_reason`, `last_error`; every traced event
  is acked, dropped, refused or still queued.
  """

  @doc "Starts tracing. Returns `{:ok, pid}` or `{:error, reason}`."
  def start(opts) when is_list(opts) or is_map(opts), do: :scope_tracer.start(Map.new(opts))

  @doc "Stops tracing, flushes what is queued (bounded by `stop_timeout`) and returns the stats."
  def stop, do: :scope_tracer.stop()

  @doc "The running tracer's stats."
  def stats, do: :scope_tracer.stats()

  @doc "Starts a tracer on each node (the modules are loaded there): `[{node, result}]`."
  def start_cluster(nodes, opts), do: :scope_tracer.start_cluster(nodes, Map.new(opts))

  @doc "Stops the tracer of each node: `[{node, {:ok, stats} | {:error, reason}}]`."
  def stop_cluster(nodes), do: :scope_tracer.stop_cluster(nodes)
end
