%% scope_buf: the client's bounded event queue. When full, the oldest
%% event is dropped to make room for the newest and counted: memory stays
%% bounded while the cluster is slow or away, and what is lost is known.
-module(scope_buf).

-export([new/1, push/2, take/2, len/1, dropped/1, max/1]).

-record(buf, {q = queue:new(), len = 0, max, dropped = 0}).

new(Max) when is_integer(Max), Max > 0 -> #buf{max = Max}.

push(E, #buf{len = L, max = M} = B) when L < M ->
    B#buf{q = queue:in(E, B#buf.q), len = L + 1};
push(E, #buf{q = Q, dropped = D} = B) ->
    {{value, _}, Q1} = queue:out(Q),
    B#buf{q = queue:in(E, Q1), dropped = D + 1}.

%% take/2 removes up to N of the oldest events, oldest first.
take(N, #buf{len = L} = B) when N >= L ->
    {queue:to_list(B#buf.q), B#buf{q = queue:new(), len = 0}};
take(N, #buf{q = Q, len = L} = B) ->
    {Out, Rest} = queue:split(N, Q),
    {queue:to_list(Out), B#buf{q = Rest, len = L - N}}.

len(#buf{len = L}) -> L.
dropped(#buf{dropped = D}) -> D.
max(#buf{max = M}) -> M.
