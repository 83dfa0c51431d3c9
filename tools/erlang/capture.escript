#!/usr/bin/env escript
%%! -sname scope_capture
%% capture.escript OUT.jsonl [Workers Rounds Depth Pings [exception_trace|return_trace]]
%%
%% Compiles the Scope client (clients/erlang/src) and scope_workload.erl
%% (next to this script), traces the workload in its own process tree with
%% the client's offline mode and writes the Scope events to OUT.jsonl. See
%% README.md.
-mode(compile).

main([Out | Rest]) ->
    {[Workers, Rounds, Depth, Pings], Match} =
        case Rest of
            [] -> {[4, 2, 20, 3], exception_trace};
            [_, _, _, _] -> {[list_to_integer(A) || A <- Rest], exception_trace};
            [_, _, _, _, M] -> {[list_to_integer(A) || A <- lists:sublist(Rest, 4)], list_to_existing_atom(M)}
        end,
    Dir = filename:dirname(escript:script_name()),
    Client = filelib:wildcard(filename:join([Dir, "..", "..", "clients", "erlang", "src", "*.erl"])),
    [load(F) || F <- Client ++ [filename:join(Dir, "scope_workload.erl")]],
    Self = self(),
    Root = spawn(fun() ->
                         receive go -> ok end,
                         Exits = scope_workload:run(#{workers => Workers, rounds => Rounds,
                                                      depth => Depth, pings => Pings}),
                         Self ! {done, Exits}
                 end),
    {ok, _} = scope_tracer:start(#{file => Out, procs => [Root], modules => [scope_workload], match => Match}),
    Root ! go,
    Exits = receive {done, E} -> E after 60000 -> error(workload_timeout) end,
    {ok, Stats} = scope_tracer:stop(),
    io:format("~ts: workers exited ~0tp~n~0tp~n", [Out, Exits, Stats]);
main(_) ->
    io:format(standard_error, "usage: capture.escript OUT.jsonl [Workers Rounds Depth Pings [exception_trace|return_trace]]~n", []),
    halt(2).

load(File) ->
    {ok, Mod, Bin} = compile:file(File, [binary, report, warnings_as_errors]),
    {module, Mod} = code:load_binary(Mod, File, Bin).
