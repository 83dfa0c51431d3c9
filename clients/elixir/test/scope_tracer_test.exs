# `mix test` in this directory (compiles ../erlang/src too), or with the
# Erlang client compiled elsewhere:
#   erlc -o /tmp/ebin ../erlang/src/*.erl
#   elixir -pa /tmp/ebin -r lib/scope/tracer.ex -r test/test_helper.exs test/scope_tracer_test.exs
# (what cmd/scope TestElixirWrapper runs).

defmodule Scope.TracerTest do
  use ExUnit.Case

  defmodule Worker do
    def deep(0), do: raise(ArgumentError, "bottom")
    def deep(n), do: 1 + deep(n - 1)
  end

  test "traces an Elixir process into a file through the wrapper" do
    file = Path.join(System.tmp_dir!(), "scope_ex_#{System.unique_integer([:positive])}.jsonl")
    parent = self()

    w =
      spawn(fn ->
        receive do
          :go -> :ok
        end

        try do
          Worker.deep(2)
        rescue
          ArgumentError -> :ok
        end

        send(parent, :done)
      end)

    assert {:ok, _} = Scope.Tracer.start(file: String.to_charlist(file), procs: [w], modules: [Worker])
    assert %{traced: _, stopped_reason: :undefined} = Scope.Tracer.stats()
    send(w, :go)
    assert_receive :done, 5000
    assert {:ok, %{traced: n, written: n, stopped_reason: :stop}} = Scope.Tracer.stop()

    events = file |> File.read!() |> String.split("\n", trim: true) |> Enum.map(&:scope_json.decode/1)
    File.rm!(file)
    assert length(events) == n
    calls = for %{"kind" => "KIND_CALL", "module" => "Elixir.Scope.TracerTest.Worker"} = e <- events, do: e
    exceptions = for %{"kind" => "KIND_EXCEPTION"} = e <- events, do: e
    assert length(calls) == 3
    assert length(exceptions) == 3
  end

  test "rejects a bad endpoint with the option named" do
    assert {:error, {:bad_option, :endpoint, "ftp://x", _}} = Scope.Tracer.start(endpoint: "ftp://x")
  end
end
